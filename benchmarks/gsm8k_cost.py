"""What the paper's GSM8K run costs at list prices: token counts measured on a small run, scaled to the full run.

1. A scripted OpenAI-shaped server plays the core and the teacher with GSM8K-shaped replies: the core answers with
   GSM8K's own worked solution (calculator annotations removed) and '#### N'; the teacher writes one strategy step
   per solution line (results removed). Tokens are ceil(characters / 4), as sim_core.py counts them.
2. The recipe's own stages run on --n problems of each split (data --family gsm8k, baselines, sample, eval with the
   teacher), so the measured prompts are exactly those a real run sends.
3. Mean input and output tokens per request of each kind (core alone, core with a strategy, teacher), times the
   requests `TASK=gsm8k bash train.sh` makes (all of GSM8K, exectune's default stage sizes read from its config
   classes, the stages train.sh runs), priced from core_client.PRICES. The guide's strategies in SFT and GRPO
   validation, GRPO rewards and evaluation are priced like the teacher's. Every teacher strategy counts as valid and
   every GRPO sample as run by the core, so the request counts are upper bounds.

    python benchmarks/gsm8k_cost.py --data-dir data/gsm8k [--n 40]
Real models write longer replies than GSM8K's terse solutions, so read the output-token figures as a lower bound
(the last line also gives the total with the cores' replies three times longer).
"""
import argparse
import json
import math
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import core_client  # noqa: E402
import exectune  # noqa: E402
import grpo  # noqa: E402
import gsm8k  # noqa: E402
import sample  # noqa: E402
import sft  # noqa: E402
import sim_core  # noqa: E402
import strategy_format  # noqa: E402

CORE, LARGE = "claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022"
# what `TASK=gsm8k bash train.sh` runs: all of GSM8K (--n-train 7473 --n-test 1319; the data stage's n_val of train
# become val), two SFT runs (accepted, raw), two GRPO runs (structure, outcome), and five evaluations with the core
# (the teacher's strategies and four guides'); every other size is exectune's default
N_VAL = exectune.DataConfig().n_val
N_TRAIN, N_TEST = 7473 - N_VAL, 1319
SFT_RUNS, GRPO_RUNS, GUIDED_EVALS = 2, 2, 5


def full_run_plan():
    """(stage, request kind, model, requests in the full run) for each kind of request the full run makes."""
    base, sampling = exectune.BaselineConfig(), sample.SampleConfig()
    sup, rl = sft.SFTConfig(), grpo.GRPOConfig()
    sft_evals = math.ceil(sup.steps / sup.eval_every)       # every eval_every steps, and at the last one
    rl_evals = 1 + math.ceil(rl.steps / rl.eval_every)       # the same, and the starting guide at step 0
    rl_val = min(rl.n_val_eval, N_VAL)
    rl_samples = rl.steps * rl.prompts_per_step * rl.group_size
    return [
        ("baselines: core alone on test", f"alone {CORE}", CORE, N_TEST),
        ("baselines: large core alone on test", f"alone {LARGE}", LARGE, N_TEST),
        (f"baselines: core alone on train ({base.alone_runs} runs)", f"alone {CORE}", CORE, base.alone_runs * N_TRAIN),
        (f"sample: teacher ({sampling.k} per task)", "teacher", LARGE, sampling.k * N_TRAIN),
        (f"sample: core executes ({sampling.m} per strategy)", f"strategy {CORE}", CORE,
         sampling.m * sampling.k * N_TRAIN),
        (f"sft: validation ({SFT_RUNS} runs x {sft_evals} x {N_VAL} val)", f"strategy {CORE}", CORE,
         SFT_RUNS * sft_evals * N_VAL),
        (f"grpo: core rewards ({GRPO_RUNS} runs x {rl.steps} steps x {rl.prompts_per_step} x {rl.group_size})",
         f"strategy {CORE}", CORE, GRPO_RUNS * rl_samples),
        (f"grpo: validation ({GRPO_RUNS} runs x {rl_evals} x {rl_val} val)", f"strategy {CORE}", CORE,
         GRPO_RUNS * rl_evals * rl_val),
        ("eval: teacher on test", "teacher", LARGE, N_TEST),
        (f"eval: core with a strategy (teacher + {GUIDED_EVALS - 1} guides)", f"strategy {CORE}", CORE,
         GUIDED_EVALS * N_TEST)]


def plain(solution):
    return re.sub(r"<<[^>]*>>", "", solution)


def serve(by_question, log):
    class Scripted(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            messages = body["messages"]
            problem, strategy = strategy_format.parse_core_request(messages)
            solution = by_question[problem]
            lines = plain(solution).splitlines()[:-1]
            if messages[0]["content"].startswith(gsm8k.TEACHER_SYSTEM):   # with or without the naming sentence
                kind = "teacher"
                steps = [re.sub(r"\s*=\s*\$?[\d.,]+", "", line) for line in lines] or ["Read the problem."]
                text = "<strategy>\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) + "\n</strategy>"
            else:
                kind = f"{'alone' if strategy is None else 'strategy'} {body['model']}"
                text = plain(solution)
            usage = sim_core.tokens("".join(m["content"] for m in messages)), sim_core.tokens(text)
            log.append((kind, *usage))
            sim_core.send_json(self, 200, sim_core.openai_body(body["model"], [text], *usage))

    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="data/gsm8k")
    p.add_argument("--n", type=int, default=40, help="problems per split in the measured run")
    args = p.parse_args()
    try:
        splits = gsm8k.load(args.data_dir, n_val=args.n)
    except ValueError as e:
        sys.exit(f"error: {e}")
    by_question = {t.problem: t.solution for s in splits.values() for t in s}
    log = []
    server = serve(by_question, log)
    url = f"http://127.0.0.1:{server.server_port}/v1"
    with tempfile.TemporaryDirectory() as run:
        common = ["--run", run, "--core-url", url, "--core-model", CORE, "--large-core-model", LARGE,
                  "--teacher-model", LARGE]
        for stage, *flags in (["data", "--family", "gsm8k", "--data-dir", args.data_dir, "--n-train", str(args.n),
                               "--n-val", str(args.n), "--n-test", str(args.n)],
                              ["baselines"], ["sample"], ["eval", "--guide", "teacher"]):
            if exectune.main([stage, *common, *flags]) != 0:
                sys.exit(f"error: the {stage} stage failed")
    server.shutdown()

    def mean(kind):
        rows = [(i, o) for k, i, o in log if k == kind]
        return (sum(i for i, _ in rows) / len(rows), sum(o for _, o in rows) / len(rows)) if rows else (0, 0)

    plan = full_run_plan()
    total, core_output, out = 0.0, 0.0, []
    for stage, kind, model, n in plan:
        tin, tout = mean(kind)
        price_in, price_out = core_client.model_price(model)
        dollars = n * (tin * price_in + tout * price_out) / 1e6
        total += dollars
        core_output += 0.0 if kind == "teacher" else n * tout * price_out / 1e6
        out.append(dict(stage=stage, model=model, requests=n, mean_input_tokens=round(tin, 1),
                        mean_output_tokens=round(tout, 1), dollars=round(dollars, 2)))
    for row in out:
        print(json.dumps(row))
    # a real core's chain of thought runs longer than GSM8K's terse solutions: the total if its replies were 3x longer
    print(json.dumps({"measured_requests": len(log), "n_per_split": args.n, "total_dollars": round(total, 2),
                      "total_dollars_core_replies_3x": round(total + 2 * core_output, 2)}))


if __name__ == "__main__":
    main()
