"""How a stage is configured: a dataclass of defaults per stage (beside the stage's code), changed by a preset
(sizes for another budget; for level2 and codesim also the earlier recipe), overridden by the flags the user sets.

1. Each stage's dataclass (exectune.DataConfig, sample.SampleConfig, sft.SFTConfig, grpo.GRPOConfig, ...) holds the
   defaults, names its stage (`stage`), and checks its values when it is made (`at_least`), so a bad flag stops the
   command before it writes anything.
2. PRESETS: sizes for another budget; level2 and codesim also set the earlier recipe (K = 4, keep 1, no naming
   instruction, no prompt loss, SFT lr 3e-3). bash train.sh picks one from QUICK, LEVEL, DEVICE, TASK; `--preset`.
3. `stage_config` applies them in that order: defaults, then the preset's values for the stage, then explicit flags.
"""
import argparse
import dataclasses


def at_least(cfg, low, *names):
    """Raise ValueError, naming the flag, for the first of cfg's fields `names` that is below `low` (or, for a
    seed, above what the random generators take)."""
    for name in names:
        value = getattr(cfg, name)
        if not value >= low:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
        if name == "seed" and value >= 2 ** 32:
            raise ValueError(f"--seed must be < 2**32, got {value}")


# Presets, over the stages' defaults: sizes for other budgets, and for level2 and codesim the earlier recipe (train.sh
# picks one from QUICK, LEVEL, DEVICE, TASK).
PRESETS = {}
PRESETS["quick"] = {
    "data": dict(n_train=80, n_val=24, n_test=60, n_ood=30),
    "sample": dict(k=2, chunk=40),
    "sft": dict(steps=30, batch_size=8, eval_every=15, n_layer=2, n_embd=64, n_head=2, n_kv_head=1, compile=False),
    "grpo": dict(steps=3, prompts_per_step=4, group_size=4, eval_every=3, n_val_eval=24),
    "decode": dict(max_new_tokens=96),
}
# level2 and codesim keep the sampling, SFT and GRPO settings their results were measured with (docs/experiments.md)
_EARLIER_SAMPLE = dict(k=4, keep=1, name_quantities=False)
_EARLIER_SFT = dict(prompt_loss_weight=0.0, lr=3e-3, init_scale=1.0)
_EARLIER_GRPO = dict(lr=2e-4, steps=40, eval_every=10)
PRESETS["level2"] = {        # LEVEL=2 on a CPU in under an hour: longer problems, so fewer tasks and SFT steps
    "data": dict(level=2, n_train=4000),
    "sample": _EARLIER_SAMPLE,
    "sft": dict(_EARLIER_SFT, steps=2000),
    "grpo": dict(_EARLIER_GRPO, steps=20),
}
PRESETS["codesim"] = {       # TASK=codesim: a clear wrong plan costs more than a right one gains, so the guide must be
    "sample": _EARLIER_SAMPLE,  # nearly always right: SFT runs longer (docs/experiments.md: codesim); it learns the
    # problem text, which the decline gate reads, and to decline where no teacher strategy beat the core alone
    "sft": dict(_EARLIER_SFT, steps=5000, prompt_loss_weight=0.5, decline_targets=True),
    "grpo": _EARLIER_GRPO,
}
PRESETS["cuda"] = {          # DEVICE=cuda: level 2, a larger guide and more steps for one modern GPU
    "data": dict(level=2, n_train=20000),
    "sft": dict(steps=6000, batch_size=64, lr=1e-3, warmup=200, eval_every=500, n_layer=8, n_embd=384, n_head=6,
                n_kv_head=2, init_scale=1.0),   # the model's own init; no GPU has run this preset yet
    "grpo": dict(steps=100, prompts_per_step=16, eval_every=20, n_val_eval=500),
    "eval": dict(batch_size=250),
}


def stage_config(cls, args):
    """A stage's dataclass (cls.stage names the stage): its defaults, then the preset's values for that stage, then
    the flags the user set explicitly (checked by the dataclass: a ValueError names the flag)."""
    values = dict(PRESETS[args.preset].get(cls.stage, {}) if args.preset else {})
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None)
                   is not None})
    return cls(**values)


def add_config_flags(parser, cls):
    """One flag per field of a stage's dataclass: --field-name, parsed by the field's type (or by the `parse` in its
    metadata, e.g. grpo.GRPOConfig.weights), default None so that stage_config can tell what the user set."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if type(default) is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"default {default}")
        else:
            parse = f.metadata.get("parse")
            parser.add_argument(flag, type=_flag_type(parse) if parse else type(default), default=None,
                                choices=f.metadata.get("choices"), help=f"default {default}")


def _flag_type(parse):
    """parse, with its ValueError's message shown by argparse (it would print only "invalid ... value")."""
    def parsed(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parsed.__name__ = getattr(parse, "__name__", "value")
    return parsed
