"""
The `saekit` command.

    saekit demo                  the whole pipeline: collect, train a TopK SAE, evaluate, write an HTML report
    saekit generate              write a story and answer a chat question with the default model
    saekit probe                 check what a model has learned (TinyWorld capability probes)
    saekit concepts              the table of TinyWorld's ground-truth concepts, with frequencies
    saekit train-model --out D   rebuild the default model and tokenizer from scratch (deterministic)

    saekit collect --out STORE   record a model's activations into an activation store (rerun: resume or extend)
    saekit train --config F      train SAE(s) on a store (checkpointed; rerun: resume); also under torchrun
    saekit eval SAE_DIR          evaluate a saved SAE on held-out text (or a store) and write a JSON report
    saekit dashboard SAE_DIR     feature statistics (saved) and HTML feature pages
    saekit export SAE_DIR        the saved statistics as Neuronpedia's export layout and SAEDashboard batches

Every command that uses a model takes `--model PATH`: a nanochat checkpoint folder or nanochat's
base directory (`~/.cache/nanochat`), with `--source`, `--model-tag` and `--step` as in nanochat,
and `--device` (default auto: cuda when available).

collect, train, eval, dashboard and export also take `--config FILE`: a JSON object (or TOML, on
Python 3.11+) whose keys are the command's flags (`batch-rows` or `batch_rows`); flags given on
the command line win over the file, and relative paths are read from the current directory. For
train the file is the one `torchrun -m saekit.distributed` reads (store, hook, sae, train, out).

On a GPU the model and the SAEs run under bfloat16 autocast (parameters and Adam stay float32)
and collection batches are larger; the SAE batch size is the same everywhere (a hyperparameter,
not a hardware setting). `saekit train --autocast bfloat16` also pays on CPUs with AVX512-BF16.
`torchrun --nproc_per_node N -m saekit.cli train --config F` trains on N GPUs.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from saekit.demo import DemoConfig
from saekit.nanochat import generate, load_model
from saekit.pretrain import PretrainConfig

# Defaults that follow from the hardware: larger forward batches and bfloat16 autocast on a GPU
DEVICE_DEFAULTS = {"cpu": {"batch_rows": 32, "autocast": "none", "stats_batch": 8192},
                   "cuda": {"batch_rows": 128, "autocast": "bfloat16", "stats_batch": 32768}}
AUTOCAST = {"none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATS_FILE = "feature_stats.npz"
DASHBOARD_FILE = "dashboard.json"  # beside the statistics: what they were computed from


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="nanochat checkpoint folder or base dir (default: the embedded model)")
    parser.add_argument("--source", default="base", choices=["base", "sft", "rl"], help="checkpoint kind in a base dir")
    parser.add_argument("--model-tag", help="model folder such as d20 (default: the largest depth)")
    parser.add_argument("--step", type=int, help="checkpoint step (default: the last)")
    parser.add_argument("--tokenizer", help="tokenizer.pkl or its folder (default: found beside the checkpoint)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda when available)")


def _device(name: str) -> str:
    """`auto` -> cuda when available, else cpu; anything else must be a device torch knows."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device: expected cpu, cuda, cuda:N or auto, found {name!r}") from exc
    return name


def _hardware_default(args: argparse.Namespace, name: str):
    return DEVICE_DEFAULTS["cuda" if torch.device(args.device).type == "cuda" else "cpu"][name]


def _load(args: argparse.Namespace):
    return load_model(args.model, source=args.source, model_tag=args.model_tag, step=args.step,
                      tokenizer=args.tokenizer, device=args.device)


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", 0)) == 0


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


def _sae_model_and_store(args: argparse.Namespace):
    """For eval and dashboard: the saved SAE (on --device), its hook point, the model it reads, and the
    activations — a collected store (--store) or --tokens collected in memory from --data."""
    from saekit.sae.io import load_sae
    from saekit.store import ActivationStore, _hook_dims, collect_activations

    _require(args, "sae")
    sae = load_sae(args.sae).to(args.device)
    hook = args.hook or sae.cfg.hook_name
    if not hook:
        raise ValueError(f"{args.sae}/cfg.json names no hook point; pass --hook")
    model, tokenizer = _load(args)
    width = _hook_dims(model, [hook])[hook]
    if width != sae.cfg.d_in:
        raise ValueError(f"the SAE reads d_in={sae.cfg.d_in} activations but {hook} of {model.name} has "
                         f"width {width}; is this the model it was trained on?")
    if args.store:
        store = ActivationStore(args.store)
        store.d_in(hook)  # the store must hold the hook
    else:
        store = collect_activations(model, tokenizer, hook, args.tokens, None, source=_data(args.data),
                                    batch_rows=_hardware_default(args, "batch_rows"),
                                    autocast=AUTOCAST[_hardware_default(args, "autocast")], progress=True)
    return sae, hook, model, tokenizer, store


def cmd_eval(args: argparse.Namespace) -> None:
    from saekit.atomic import write_json_atomic
    from saekit.evaluate import evaluate_sae

    sae, hook, model, tokenizer, store = _sae_model_and_store(args)
    tokens = min(args.tokens, len(store))
    report = {"sae": str(Path(args.sae).resolve()), "architecture": sae.cfg.architecture, "d_sae": sae.cfg.d_sae,
              "hook": hook, "model": model.name, "data": str(Path(args.store).resolve()) if args.store else
              _data(args.data), "tokens": tokens,
              **evaluate_sae(sae, store, hook, model, tokenizer, tokens, args.downstream_rows, _data(args.data))}
    out = Path(args.out) if args.out else Path(args.sae) / "saekit_eval.json"
    write_json_atomic(out, report)
    for section in ("reconstruction", "downstream"):
        print(section + ": " + ", ".join(f"{k} {v}" for k, v in report.get(section, {}).items()))
    if "concepts" in report:
        c = report["concepts"]
        print(f"concepts: coverage {c['coverage']}, {c['concepts_found']} of {len(c['rows'])} with F1 >= 0.8")
    print(f"report written to {out}")


def cmd_collect(args: argparse.Namespace) -> None:
    from saekit.store import MANIFEST, collect_activations

    _require(args, "out")
    model, tokenizer = _load(args)
    hooks = args.hook or [f"blocks.{model.config.n_layer // 2}.hook_resid_post"]
    manifest = Path(args.out) / MANIFEST
    if manifest.is_file():
        done = sum(s["tokens"] for s in json.loads(manifest.read_text()).get("shards", []))
        print(f"resuming the store at {args.out}: {done:,} of {args.tokens:,} tokens already collected")
    batch_rows = args.batch_rows or _hardware_default(args, "batch_rows")
    autocast = _hardware_default(args, "autocast") if args.autocast == "auto" else args.autocast
    store = collect_activations(model, tokenizer, hooks, args.tokens, args.out, source=_data(args.data),
                                context_size=args.context_size, batch_rows=batch_rows, dtype=args.dtype,
                                autocast=AUTOCAST[autocast], progress=not args.no_progress)
    print(f"{store!r}\nmodel {model.name} on {args.device}, autocast {autocast}, {batch_rows} rows per forward pass")


def _train_config(args: argparse.Namespace) -> dict:
    """The training config (`saekit.distributed`'s format) from --config and the flags, the flags winning."""
    from dataclasses import fields

    from saekit.distributed import CONFIG_KEYS
    from saekit.train import TrainConfig

    config = _read_config(args.config, CONFIG_KEYS) if args.config else {}
    config.update({key: getattr(args, key) for key in ("store", "hook", "out") if getattr(args, key) is not None})
    if args.sae is not None:
        config["sae"] = _json_flag("--sae", args.sae)
    specs = config.get("sae") or {}
    specs = specs if isinstance(specs, list) else [specs]
    if not all(isinstance(spec, dict) for spec in specs):
        raise ValueError(f"sae must be an object of SAEConfig settings or a list of them, found {config['sae']!r}")
    specs = [dict(spec) for spec in specs]
    flags = {"architecture": args.architecture, "d_sae": args.d_sae, "k": args.k}
    for spec in specs:
        spec.update({key: value for key, value in flags.items() if value is not None})
        spec.setdefault("architecture", "topk")
        if "d_sae" not in spec:
            raise ValueError("every SAE needs a width: --d-sae, or d_sae in the config's sae")
    config["sae"] = specs if len(specs) > 1 else specs[0]
    train = dict(config.get("train") or {})
    valid = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(train) - set(valid))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in the config's train; valid keys: {valid}")
    train.update({key: getattr(args, key) for key in ("steps", "batch_size", "lr", "seed", "checkpoint_every",
                                                      "checkpoint_dir") if getattr(args, key) is not None})
    for key in ("store", "out"):
        if not config.get(key):
            raise ValueError(f"train needs --{key} (or {key} in the config file)")
    out = Path(config["out"])  # beside OUT, not inside it: saving the SAE replaces OUT whole
    train.setdefault("checkpoint_dir", str(out.with_name(out.name + "-checkpoints")))
    steps = train.get("steps", TrainConfig.steps)
    train.setdefault("checkpoint_every", max(1, steps // 10))
    if args.autocast != "auto" or "autocast" not in train:  # an explicit flag wins over the file
        choice = _hardware_default(args, "autocast") if args.autocast == "auto" else args.autocast
        train["autocast"] = None if choice == "none" else choice
    config["train"] = train
    return config


def cmd_train(args: argparse.Namespace) -> None:
    from saekit.distributed import run
    from saekit.train import CHECKPOINT

    config = _train_config(args)
    checkpoint = Path(config["train"]["checkpoint_dir"]) / CHECKPOINT
    if checkpoint.is_file() and _is_main_rank():
        print(f"resuming from the checkpoint {checkpoint}")
    run(config, progress=not args.no_progress, device=args.device)


def cmd_dashboard(args: argparse.Namespace) -> None:
    from saekit.atomic import write_json_atomic, write_text_atomic
    from saekit.cards import write_feature_page
    from saekit.features import feature_statistics

    sae, hook, model, tokenizer, store = _sae_model_and_store(args)
    data = _source_name(store.manifest.get("source", {})) if args.store else _data(args.data)
    out = Path(args.out) if args.out else Path(args.sae) / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    stats = feature_statistics(sae, store, model, tokenizer, args.tokens, hook,
                               batch_size=args.batch_size or _hardware_default(args, "stats_batch"), n_top=args.n_top,
                               seed=args.seed, progress=True)
    stats.save(out / STATS_FILE)
    write_json_atomic(out / DASHBOARD_FILE, {"sae": str(Path(args.sae).resolve()), "model": model.name,
                                             "n_layer": model.config.n_layer, "hook": stats.hook, "data": data,
                                             "store": args.store and str(Path(args.store).resolve()),
                                             "tokens": stats.n_tokens})
    latents = _latents(args.latents, stats)
    pages = [latents[i:i + args.per_page] for i in range(0, len(latents), args.per_page)]
    names = [f"features_{page[0]:05d}.html" for page in pages]
    for page, name in tqdm(list(zip(pages, names)), desc="pages", unit="page"):
        write_feature_page(stats, page, out / name, title=f"{model.name} {stats.hook}: latents {page[0]}..{page[-1]}")
    links = "".join(f'<li><a href="{name}">latents {page[0]}..{page[-1]}</a></li>' for page, name in zip(pages, names))
    write_text_atomic(out / "index.html", f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                      f"<title>saekit features</title></head><body><h2>{html.escape(repr(stats))}</h2>"
                      f"<ul>{links}</ul></body></html>\n")
    print(f"{stats!r}\nstatistics: {out / STATS_FILE}\npages:      {out / 'index.html'} ({len(pages)} pages)")


def cmd_export(args: argparse.Namespace) -> None:
    from saekit.features import FeatureStats
    from saekit.neuronpedia_export import write_neuronpedia_export, write_saedashboard_batches

    _require(args, "sae")
    stats_path = Path(args.stats) if args.stats else Path(args.sae) / "dashboard" / STATS_FILE
    if not stats_path.is_file():
        raise FileNotFoundError(f"no feature statistics at {stats_path}; run `saekit dashboard` first or pass --stats")
    stats = FeatureStats.load(stats_path)
    facts = json.loads((stats_path.parent / DASHBOARD_FILE).read_text()) if (
        stats_path.parent / DASHBOARD_FILE).is_file() else {}
    cfg_path = Path(args.sae) / "cfg.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{args.sae} holds no cfg.json: expected a saved SAE folder")
    saelens_config = json.loads(cfg_path.read_text())
    model_id = args.model_id or facts.get("model") or saelens_config.get("metadata", {}).get("model_name")
    if not model_id:
        raise ValueError("no model id in the statistics' dashboard.json or the SAE's cfg.json; pass --model-id")
    out = Path(args.out) if args.out else Path(args.sae) / "neuronpedia"
    names = dict(source_set=args.source_set, suffix=args.suffix, batch_size=args.batch_size,
                 dataset=args.dataset or str(facts.get("data", "")))
    if args.format in ("neuronpedia", "both"):
        folder = write_neuronpedia_export(stats, out, model_id, **names, release=args.release,
                                          model_layers=args.model_layers or facts.get("n_layer", 0),
                                          saelens_config=saelens_config, hf_repo_id=args.hf_repo_id,
                                          hf_folder_id=args.hf_folder_id, created_at=args.created_at)
        print(f"Neuronpedia export: {folder}")
    if args.format in ("saedashboard", "both"):
        folder = write_saedashboard_batches(stats, out / "saedashboard", model_id, **names)
        print(f"SAEDashboard batches: {folder}")


def cmd_demo(args: argparse.Namespace) -> None:
    from saekit.demo import run_demo

    cfg = DemoConfig(d_sae=args.d_sae, k=args.k, steps=args.steps, train_tokens=args.train_tokens,
                     eval_tokens=args.eval_tokens)
    path = run_demo(args.out, args.model, args.hook, cfg)
    print(f"\nreport: {path.resolve()}\nSAE:    {(path.parent / 'sae').resolve()}")


# --------------------------------------------------------------------------- config files and flag helpers


def _read_config(path: str | os.PathLike, valid: set[str] | list[str]) -> dict:
    """A JSON (or, on Python 3.11+, TOML) object whose keys must be among `valid` (`-` read as `_`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        if sys.version_info < (3, 11):
            raise ValueError(f"{path}: TOML configs need Python 3.11+ (tomllib); write the config as JSON")
        import tomllib

        try:
            config = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path} is not valid TOML: {exc}") from exc
    else:
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold an object of settings, found a {type(config).__name__}")
    config = {key.replace("-", "_"): value for key, value in config.items()}
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in {path}; valid keys: {sorted(valid)}")
    return config


def _apply_config(parser: argparse.ArgumentParser, argv: list[str] | None, args: argparse.Namespace):
    """Parse again with the command's --config file as its defaults, so that flags given explicitly win."""
    command = args.command_parser
    actions = {a.dest: a for a in command._actions if a.dest not in ("help", "config", "command_parser", "func")}
    config = _read_config(args.config, set(actions))
    for key, value in config.items():
        action = actions[key]
        if action.nargs == 0 and not isinstance(value, bool):  # a switch such as --no-progress
            raise ValueError(f"{args.config}: {key} must be true or false, found {value!r}")
        if action.choices is not None and value not in action.choices:
            raise ValueError(f"{args.config}: {key} must be one of {list(action.choices)}, found {value!r}")
    command.set_defaults(**config)
    return parser.parse_args(argv)


def _require(args: argparse.Namespace, name: str) -> None:
    if getattr(args, name) is None:
        flag = name if name == "sae" else "--" + name.replace("_", "-")
        raise ValueError(f"{flag} is required (on the command line or as {name!r} in --config)")


def _data(spec: str | list[str]) -> str:
    """A text-source spec (tinyworld:SEED, or paths joined by commas); a config file may give a list of paths."""
    return ",".join(map(str, spec)) if isinstance(spec, list) else str(spec)


def _source_name(source: dict) -> str:
    """A short name for a store's text source: tinyworld:SEED, a few file names, or the folders of many files."""
    if source.get("kind") == "tinyworld":
        return f"tinyworld:{source['seed']}"
    paths = [Path(p) for p in source.get("paths", [])]
    names = [p.name for p in paths] if len(paths) <= 3 else sorted({p.parent.name + "/" for p in paths})
    return ",".join(names)


def _json_flag(flag: str, value):
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} expects JSON (an object, or a list of them), found {value!r}") from exc


def _latents(spec, stats) -> list[int]:
    """`alive` (the latents that fired), `all`, or latent numbers (a list, or a comma-separated string)."""
    if spec == "all":
        return list(range(stats.d_sae))
    if spec == "alive":
        latents = [int(i) for i in (stats.fires > 0).nonzero()[0]]
        if not latents:
            raise ValueError(f"no latent fired on the {stats.n_tokens:,} tokens read; pass --latents all to see them")
        return latents
    try:
        return [int(i) for i in (spec.split(",") if isinstance(spec, str) else spec)]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--latents expects alive, all or latent numbers like 0,5,9; found {spec!r}") from exc


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

    data_help = ("text: tinyworld:SEED (labelled: adds concept recovery), or .txt/.jsonl/.parquet files or folders "
                 "of them, comma-separated (nanochat's base_data/ shards)")
    p = sub.add_parser("collect", help="record activations into a store on disk (rerun: resume or extend)")
    _add_config_arg(p, cmd_collect)
    _add_model_args(p)
    p.add_argument("--out", help="store folder (required); rerun on it to resume, or to extend with more --tokens")
    p.add_argument("--hook", nargs="+", help="hook point(s) (default: the middle layer's resid_post)")
    p.add_argument("--tokens", type=int, default=1_000_000, help="activations to collect (special tokens dropped)")
    p.add_argument("--data", default="tinyworld:0", help=data_help)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="storage dtype")
    p.add_argument("--context-size", type=int, help="tokens per row (default: the model's context, at most 256)")
    p.add_argument("--batch-rows", type=int, help="rows per forward pass (default: 32 on CPU, 128 on a GPU; "
                   "a store resumes only with the same value)")
    p.add_argument("--autocast", default="auto", choices=["auto", *AUTOCAST],
                   help="the model's forward under torch.autocast (default: bfloat16 on a GPU, none on CPU)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("train", help="train SAE(s) on a store; checkpointed, rerun to resume; works under torchrun")
    _add_config_arg(p, cmd_train, "JSON/TOML: store, hook, sae (one or a list), train (TrainConfig's fields), out "
                                  "-- the file torchrun -m saekit.distributed reads")
    p.add_argument("--store", help="activation store (from saekit collect)")
    p.add_argument("--hook", help="hook point (optional for a one-hook store)")
    p.add_argument("--out", help="where the SAE goes (several SAEs: OUT/0, OUT/1, ...)")
    p.add_argument("--sae", help='SAE settings as JSON, e.g. \'{"architecture": "topk", "d_sae": 16384, "k": 32}\' '
                                 "or a list of them (one pass for all)")
    p.add_argument("--architecture", choices=["relu", "topk", "batchtopk", "gated", "jumprelu"],
                   help="set on every SAE (default: topk)")
    p.add_argument("--d-sae", type=int, help="latents, set on every SAE")
    p.add_argument("--k", type=int, help="active latents per token (TopK family), set on every SAE")
    p.add_argument("--steps", type=int, help="training steps (default: TrainConfig's 1000)")
    p.add_argument("--batch-size", type=int, help="tokens per step, on any device (default: TrainConfig's 4096)")
    p.add_argument("--lr", type=float, help="learning rate (default: by architecture and width)")
    p.add_argument("--seed", type=int)
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: a tenth of the steps)")
    p.add_argument("--checkpoint-dir", help="default: OUT-checkpoints, beside OUT")
    p.add_argument("--autocast", choices=["auto", "none", "bfloat16", "float16"], default="auto",
                   help="the SAE's forward under torch.autocast, parameters and Adam in float32 (default: bfloat16 "
                        "on a GPU, none on CPU)")
    p.add_argument("--device", default="auto", help="one process: cpu, cuda, cuda:N or auto (default: cuda when "
                   "available); under torchrun each process takes cuda:LOCAL_RANK (gloo on CPU without CUDA)")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="evaluate a saved SAE and write a JSON report")
    _add_config_arg(p, cmd_eval)
    p.add_argument("sae", nargs="?", help="a saved SAE folder (saekit's or SAELens's format)")
    _add_model_args(p)
    p.add_argument("--hook", help="hook point (default: the SAE's own hook_name)")
    p.add_argument("--store", help="evaluate on this collected store (its first --tokens) instead of collecting")
    p.add_argument("--data", default="tinyworld:1", help="held-out " + data_help + "; also the spliced-loss rows' text")
    p.add_argument("--tokens", type=int, default=100_000, help="activations to evaluate on")
    p.add_argument("--downstream-rows", type=int, default=32, help="rows for the spliced-loss metrics")
    p.add_argument("--out", help="report path (default: SAE_DIR/saekit_eval.json)")

    p = sub.add_parser("dashboard", help="feature statistics (saved for export) and HTML feature pages")
    _add_config_arg(p, cmd_dashboard)
    p.add_argument("sae", nargs="?", help="a saved SAE folder")
    _add_model_args(p)
    p.add_argument("--hook", help="hook point (default: the SAE's own hook_name)")
    p.add_argument("--store", help="read activations from this store (recommended for large runs)")
    p.add_argument("--data", default="tinyworld:1", help="without --store: collect --tokens in memory, from "
                   + data_help)
    p.add_argument("--tokens", type=int, default=100_000, help="tokens to gather statistics over")
    p.add_argument("--out", help=f"folder for {STATS_FILE}, {DASHBOARD_FILE} and the pages "
                                 "(default: SAE_DIR/dashboard)")
    p.add_argument("--latents", default="alive", help="alive (default), all, or numbers like 0,5,9")
    p.add_argument("--per-page", type=int, default=100, help="feature cards per HTML page")
    p.add_argument("--batch-size", type=int, help="tokens encoded at once (default: 8192 on CPU, 32768 on a GPU)")
    p.add_argument("--n-top", type=int, default=20, help="top-activating examples per latent")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("export", help="saved feature statistics -> Neuronpedia export layout / SAEDashboard batches")
    _add_config_arg(p, cmd_export)
    p.add_argument("sae", nargs="?", help="the saved SAE folder the statistics describe (its cfg.json goes along)")
    p.add_argument("--stats", help=f"statistics from saekit dashboard (default: SAE_DIR/dashboard/{STATS_FILE})")
    p.add_argument("--out", help="output folder (default: SAE_DIR/neuronpedia)")
    p.add_argument("--format", default="both", choices=["neuronpedia", "saedashboard", "both"],
                   help="Neuronpedia's bulk-import layout (OUT/MODEL/SOURCE), SAEDashboard's batch-N.json "
                        "(OUT/saedashboard/...), or both")
    p.add_argument("--model-id", help="Neuronpedia model id (default: the model's name, e.g. nanochat-d20)")
    p.add_argument("--source-set", help="source set name (default: saekit-res-16k style, from hook and width)")
    p.add_argument("--suffix", help="source id suffix: LAYER-SET__SUFFIX")
    p.add_argument("--release", help="Neuronpedia release name (default: the source set)")
    p.add_argument("--dataset", help="dataset description (default: what the statistics were computed on)")
    p.add_argument("--model-layers", type=int, help="the model's layers (default: from dashboard.json)")
    p.add_argument("--batch-size", type=int, default=128, help="features per batch file (SAEDashboard's 128)")
    p.add_argument("--hf-repo-id", help="Hugging Face repo holding the weights")
    p.add_argument("--hf-folder-id", help="folder of the weights in that repo")
    p.add_argument("--created-at", help="ISO date for every row (default: now); fix it for identical bytes")
    return parser


def _add_config_arg(parser: argparse.ArgumentParser, func, help: str | None = None) -> None:
    parser.add_argument("--config", help=help or "JSON (or TOML) file whose keys are this command's flags "
                                                 "(explicit flags win)")
    parser.set_defaults(func=func, command_parser=parser)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None) and args.command != "train":  # train's file is the training config
            args = _apply_config(parser, argv, args)
        if getattr(args, "device", None):
            args.device = _device(args.device)
        args.func(args)
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        sys.exit(f"saekit {args.command}: error: {exc}")


if __name__ == "__main__":
    main()
