"""What the paper's GSM8K run costs at list prices: token counts measured on a small run, scaled to the full run.

1. A scripted OpenAI-shaped server plays the core and the teacher with GSM8K-shaped replies: the core answers with
   GSM8K's own worked solution (calculator annotations removed) and '#### N'; the teacher writes one strategy step
   per solution line (results removed). Tokens are ceil(characters / 4), as sim_core.py counts them.
2. The recipe's own stages run on --n problems of each split (data --family gsm8k, baselines, sample, eval with the
   teacher), so the measured prompts are exactly those a real run sends.
3. Mean input and output tokens per request of each kind (core alone, core with a strategy, teacher), times the
   requests `TASK=gsm8k bash train.sh` makes with its defaults, priced from core_client.PRICES. Every teacher
   strategy counts as valid and every GRPO sample as run by the core, so the request counts are upper bounds.

    python benchmarks/gsm8k_cost.py --data-dir data/gsm8k [--n 40]
Real models write longer replies than GSM8K's terse solutions, so read the output-token figures as a lower bound
(the last line also gives the total with the cores' replies three times longer).
"""
import argparse
import json
import os
import re
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import core_client  # noqa: E402
import exectune  # noqa: E402
import sim_core  # noqa: E402
import tasks  # noqa: E402

CORE, LARGE = "claude-3-5-haiku-20241022", "claude-3-5-sonnet-20241022"
# what `TASK=gsm8k bash train.sh` runs (exectune's defaults; train.sh uses all of GSM8K)
FULL = dict(n_train=7473 - 200, n_val=200, n_test=1319, alone_runs=3, k=4, m=2, grpo_runs=2, grpo_steps=20,
            prompts_per_step=8, group_size=8, val_evals=3, guided_rows=4)


def plain(solution):
    return re.sub(r"<<[^>]*>>", "", solution)


def serve(by_question, log):
    class Scripted(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            messages = body["messages"]
            problem, strategy = tasks.parse_core_request(messages)
            solution = by_question[problem]
            lines = plain(solution).splitlines()[:-1]
            if messages[0]["content"] == tasks.GSM8K_TEACHER_SYSTEM:
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
        splits = tasks.load_gsm8k(args.data_dir, n_val=args.n)
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

    f = FULL
    grpo_core = f["grpo_runs"] * (f["grpo_steps"] * f["prompts_per_step"] * f["group_size"] + f["val_evals"] * f["n_val"])
    # (stage, request kind, model, requests in the full run)
    plan = [("baselines: core alone on test", f"alone {CORE}", CORE, f["n_test"]),
            ("baselines: large core alone on test", f"alone {LARGE}", LARGE, f["n_test"]),
            ("baselines: core alone on train (R runs)", f"alone {CORE}", CORE, f["alone_runs"] * f["n_train"]),
            ("sample: teacher (K per task)", "teacher", LARGE, f["k"] * f["n_train"]),
            ("sample: core executes (M per strategy)", f"strategy {CORE}", CORE, f["m"] * f["k"] * f["n_train"]),
            ("grpo: core rewards and validation (2 runs)", f"strategy {CORE}", CORE, grpo_core),
            ("eval: teacher reference (teacher)", "teacher", LARGE, f["n_test"]),
            ("eval: core with a strategy (teacher + 4 guides)", f"strategy {CORE}", CORE,
             (1 + f["guided_rows"]) * f["n_test"])]
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
