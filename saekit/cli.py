"""
The `saekit` command.

    saekit demo                  the whole pipeline: collect, train a TopK SAE, evaluate, write an HTML report
    saekit generate              write a story and answer a chat question with the default model
    saekit probe                 check what a model has learned (TinyWorld capability probes)
    saekit concepts              the table of TinyWorld's ground-truth concepts, with frequencies
    saekit train-model --out D   rebuild the default model and tokenizer from scratch (deterministic)
    saekit eval SAE_DIR          evaluate a saved SAE on held-out text and write a JSON report

Every command that uses a model takes `--model PATH`: a nanochat checkpoint folder or nanochat's
base directory (`~/.cache/nanochat`), with `--source`, `--model-tag` and `--step` as in nanochat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saekit.demo import DemoConfig
from saekit.nanochat import generate, load_model
from saekit.pretrain import PretrainConfig


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="nanochat checkpoint folder or base dir (default: the embedded model)")
    parser.add_argument("--source", default="base", choices=["base", "sft", "rl"], help="checkpoint kind in a base dir")
    parser.add_argument("--model-tag", help="model folder such as d20 (default: the largest depth)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    parser.add_argument("--tokenizer", help="tokenizer.pkl or its folder (default: found beside the checkpoint)")
    parser.add_argument("--device", default="cpu")


def _load(args: argparse.Namespace):
    return load_model(args.model, source=args.source, model_tag=args.model_tag, step=args.step,
                      tokenizer=args.tokenizer, device=args.device)


def cmd_generate(args: argparse.Namespace) -> None:
    model, tokenizer = _load(args)
    print(f"model: {model.name} ({model.parameter_counts()['total']:,} parameters, "
          f"{model.config.n_layer} layers, vocab {tokenizer.vocab_size})")
    sampling = dict(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    prompts = [args.prompt] if args.prompt is not None else ([] if args.chat else ["Once upon a time,"])
    for prompt in prompts:
        ids = tokenizer.encode(prompt, prepend_bos=True)
        out = generate(model, ids, args.max_tokens, stop_tokens={tokenizer.bos_id}, **sampling)
        text = tokenizer.decode([t for t in out if t != tokenizer.bos_id])
        print(f"\n[story] {prompt}{text}")
    questions = [args.chat] if args.chat is not None else ([] if args.prompt else ["Name a bird.", "What is 3 plus 4?"])
    end = tokenizer.special_ids["<|assistant_end|>"]
    for question in questions:
        ids = tokenizer.render_chat([{"role": "user", "content": question}], open_assistant_turn=True)
        answer = [t for t in generate(model, ids, args.max_tokens, stop_tokens={end}, **sampling) if t != end]
        print(f"\n[chat] user: {question}\n       assistant: {tokenizer.decode(answer)}")


def cmd_probe(args: argparse.Namespace) -> None:
    from saekit.capabilities import run_probes

    model, tokenizer = _load(args)
    results = run_probes(model, tokenizer, n=args.n)
    print(f"{'probe':<15} {'accuracy':>8}   n")
    for name, r in results.items():
        print(f"{name:<15} {r['accuracy']:>8.1%} {r['n']:>3}")
        for failure in r["failures"][: args.show_failures]:
            print(f"    failed: {failure!r}")


def cmd_concepts(args: argparse.Namespace) -> None:
    from saekit.world import concept_table

    model, tokenizer = _load(args)
    print(concept_table(tokenizer, n_docs=args.docs), end="")


def cmd_train_model(args: argparse.Namespace) -> None:
    from saekit.pretrain import describe_training, train_default_model

    out = Path(args.out)
    if (out / "base_checkpoints").exists() and not args.force:
        sys.exit(f"{out} already holds checkpoints; pass --force to overwrite")
    cfg = PretrainConfig(seed=args.seed, steps=args.steps, keep_every=args.keep_every, threads=args.threads)
    meta = train_default_model(out, cfg)
    report = describe_training(meta)
    print(report)
    if args.report:
        Path(args.report).write_text(report)
    print(json.dumps(meta["probe_failures"], indent=1))


def cmd_eval(args: argparse.Namespace) -> None:
    from saekit.atomic import write_json_atomic
    from saekit.evaluate import evaluate_sae
    from saekit.sae.io import load_sae
    from saekit.store import _hook_dims, collect_activations

    sae = load_sae(args.sae)
    hook = args.hook or sae.cfg.hook_name
    if not hook:
        raise ValueError(f"{args.sae}/cfg.json names no hook point; pass --hook")
    model, tokenizer = _load(args)
    width = _hook_dims(model, [hook])[hook]
    if width != sae.cfg.d_in:
        raise ValueError(f"the SAE reads d_in={sae.cfg.d_in} activations but {hook} of {model.name} has "
                         f"width {width}; is this the model it was trained on?")
    store = collect_activations(model, tokenizer, hook, args.tokens, None, source=args.data, progress=True)
    report = {"sae": str(Path(args.sae).resolve()), "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae,
              "hook": hook, "model": model.name, "data": args.data, "tokens": args.tokens,
              **evaluate_sae(sae, store, hook, model, tokenizer, args.tokens, args.downstream_rows, args.data)}
    out = Path(args.out) if args.out else Path(args.sae) / "saekit_eval.json"
    write_json_atomic(out, report)
    for section in ("reconstruction", "downstream"):
        print(section + ": " + ", ".join(f"{k} {v}" for k, v in report.get(section, {}).items()))
    if "concepts" in report:
        c = report["concepts"]
        print(f"concepts: coverage {c['coverage']}, {c['concepts_found']} of {len(c['rows'])} with F1 >= 0.8")
    print(f"report written to {out}")


def cmd_demo(args: argparse.Namespace) -> None:
    from saekit.demo import run_demo

    cfg = DemoConfig(d_sae=args.d_sae, k=args.k, steps=args.steps, train_tokens=args.train_tokens,
                     eval_tokens=args.eval_tokens)
    path = run_demo(args.out, args.model, args.hook, cfg)
    print(f"\nreport: {path.resolve()}\nSAE:    {(path.parent / 'sae').resolve()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saekit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="collect, train, evaluate and write an HTML report (about 2 minutes)")
    p.add_argument("--out", default="saekit-demo", help="output folder (report.html and the SAE)")
    p.add_argument("--model", help="nanochat checkpoint folder or base dir (default: the embedded model)")
    p.add_argument("--hook", help="hook point (default: the middle layer's resid_post)")
    p.add_argument("--d-sae", type=int, default=DemoConfig.d_sae)
    p.add_argument("--k", type=int, default=DemoConfig.k)
    p.add_argument("--steps", type=int, default=DemoConfig.steps)
    p.add_argument("--train-tokens", type=int, default=DemoConfig.train_tokens, help="activations to train on")
    p.add_argument("--eval-tokens", type=int, default=DemoConfig.eval_tokens, help="held-out activations")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="generate text (and a chat answer) with a model")
    _add_model_args(p)
    p.add_argument("--prompt", help="text to continue (default: a story opening)")
    p.add_argument("--chat", help="a user message to answer in nanochat's chat format")
    p.add_argument("--max-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("probe", help="run the TinyWorld capability probes on a model")
    _add_model_args(p)
    p.add_argument("--n", type=int, default=70, help="prompts per probe")
    p.add_argument("--show-failures", type=int, default=2)
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("concepts", help="print TinyWorld's concept table (Markdown)")
    _add_model_args(p)
    p.add_argument("--docs", type=int, default=2000, help="documents to measure frequencies on")
    p.set_defaults(func=cmd_concepts)

    p = sub.add_parser("train-model", help="train the default TinyWorld model and tokenizer from scratch")
    p.add_argument("--out", required=True, help="output base directory (nanochat layout)")
    p.add_argument("--seed", type=int, default=PretrainConfig.seed)
    p.add_argument("--steps", type=int, default=PretrainConfig.steps)
    p.add_argument("--keep-every", type=int, default=0, help="also keep a checkpoint every N steps")
    p.add_argument("--threads", type=int, default=PretrainConfig.threads, help="torch threads (results depend on it)")
    p.add_argument("--report", help="write the Markdown training report here too")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_train_model)

    p = sub.add_parser("eval", help="evaluate a saved SAE and write a JSON report")
    p.add_argument("sae", help="a saved SAE folder (saekit's or SAELens's format)")
    _add_model_args(p)
    p.add_argument("--hook", help="hook point (default: the SAE's own hook_name)")
    p.add_argument("--data", default="tinyworld:1",
                   help="held-out text: tinyworld:SEED (labelled, adds concept recovery) or text/jsonl/parquet paths")
    p.add_argument("--tokens", type=int, default=100_000, help="activations to evaluate on")
    p.add_argument("--downstream-rows", type=int, default=32, help="rows for the spliced-loss metrics")
    p.add_argument("--out", help="report path (default: SAE_DIR/saekit_eval.json)")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        sys.exit(f"saekit {args.command}: error: {exc}")


if __name__ == "__main__":
    main()
