"""The ``memochat`` console script: chat, serve, memos, build-data, train, eval, bench, demo.

Every subcommand validates its arguments, inputs and output paths before it writes anything; a
user error (an unreadable database, a prompts file missing a placeholder, an unreachable server,
a malformed import) is one stderr line and exit code 2 (``slimkit.cli.run_main``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from memochat import __version__
from memochat.backends import Generator, load_generator
from memochat.bench import kill_test, overhead, two_writers
from memochat.config import MEMO_SCOPES, PREFILTERS, LoraConfig, MemoConfig
from memochat.consistency import (
    KINDS,
    VARIANTS,
    OracleGenerator,
    load_conversations,
    make_conversations,
    run_variant,
    save_conversations,
    table,
)  # fmt: skip
from memochat.data import OFFICIAL_MIX, build_all, counts, load_records, mix, save_records
from memochat.mtbench import answer as mt_answer
from memochat.mtbench import judge as mt_judge
from memochat.mtbench import load_mtbench
from memochat.pipeline import MemoChat, TurnResult
from memochat.prefilter import Embedder
from memochat.prompts import load_prompts
from memochat.quickstart import run as run_demo
from memochat.server import serve
from memochat.store import MemoStore, read_export
from memochat.tune import METHODS, plot_curves, tune
from memochat.web import is_loopback
from slimkit.cli import add_common, at_least, dispatching_main, make_parser, positive, report
from slimkit.errors import BadInputError
from slimkit.io import save_json, save_table
from slimkit.paths import check_input_file, check_output_dir, check_output_file, claim_output_dir

__all__ = ["build_parser", "main"]

PROG = "memochat"
KIND_TRAIN = "memochat train"
KIND_EVAL = "memochat eval"
KIND_BENCH = "memochat bench"
KIND_DEMO = "memochat demo"


# --------------------------------------------------------------------------- shared pieces


def _add_model(p: argparse.ArgumentParser, default: str = "smollm2", key_flags: tuple[str, ...] = ("--api-key", "--model-api-key")) -> None:
    p.add_argument("--model", default=default,
                   help="smollm2 (default local model), tiny (random, smoke tests), an http(s):// OpenAI-compatible "
                        "base URL, a model folder or a .gguf file")  # fmt: skip
    p.add_argument("--model-name", default="default", help="model name sent to an OpenAI-compatible server")
    p.add_argument(*key_flags, dest="model_api_key", default=None, help="bearer token for an OpenAI-compatible model server")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request to a server (default 120)")
    p.add_argument("--template", choices=("auto", "chat", "raw"), default="auto",
                   help="local models: chat template or the official raw prompt (default auto)")  # fmt: skip
    p.add_argument("--cache-dir", default=None, help="where converted GGUF models are cached (default ~/.cache/memochat)")


def _add_memo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", default=None, help="prompts file in the official prompts.json format (default: built-in)")
    p.add_argument("--max-lines", type=int, default=10, help="buffer lines that trigger memo writing (default 10)")
    p.add_argument("--max-words", type=int, default=1024, help="buffer words that trigger memo writing (default 1024)")
    p.add_argument("--keep-lines", type=int, default=2, help="buffer lines kept after memo writing (default 2)")
    p.add_argument("--context-tokens", type=int, default=2048, help="model context (default 2048)")
    p.add_argument("--answer-tokens", type=int, default=512, help="tokens left for the answer (default 512)")
    p.add_argument("--memo-tokens", type=int, default=512, help="longest memo-writing output (default 512)")
    p.add_argument("--prefilter", choices=PREFILTERS, default="auto", help="ranker past --prefilter-k memos (default auto)")
    p.add_argument("--prefilter-k", type=int, default=32, help="memos shown to the retrieval prompt at most (default 32)")
    p.add_argument("--memo-scope", choices=MEMO_SCOPES, default="user", help="retrieve from all the user's sessions or one")


def _memo_config(args: argparse.Namespace) -> MemoConfig:
    return MemoConfig(max_lines=args.max_lines, max_words=args.max_words, keep_lines=args.keep_lines,
                      context_tokens=args.context_tokens, answer_tokens=args.answer_tokens, memo_tokens=args.memo_tokens, prefilter=args.prefilter,
                      prefilter_k=args.prefilter_k, memo_scope=args.memo_scope, seed=max(0, getattr(args, "seed", 0)))  # fmt: skip


def _generator(args: argparse.Namespace, spec: str | None = None) -> Generator:
    spec = spec or args.model
    if spec == "oracle":
        return OracleGenerator()
    return load_generator(spec, cache_dir=args.cache_dir, template=args.template, model_name=args.model_name,
                          api_key=args.model_api_key, timeout=args.timeout, seed=max(0, getattr(args, "seed", 0)))  # fmt: skip


def _db(path: str, must_exist: bool) -> MemoStore:
    p = Path(path)
    if must_exist:
        check_input_file(p, "database")
    return MemoStore(p)


# --------------------------------------------------------------------------- chat


def _turn_human(res: TurnResult, show: bool) -> str:
    out = [f"bot: {res.response}"]
    if show:
        out += [f"  [memo written] {m['topic']}: {m['summary']}" for m in res.written]
        out += [f"  [memo used] {m['topic']}: {m['summary']}" for m in res.retrieved]
    return "\n".join(out)


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = _memo_config(args)
    prompts = load_prompts(args.prompts)
    gen = _generator(args)
    with gen, _db(args.db, must_exist=False) as store:  # both closed on every exit, a failed turn's included
        bot = MemoChat(gen, store, cfg, prompts)
        messages = list(args.message or [])
        interactive = not messages
        if interactive:
            print("memochat: type a message; /memos lists the memos, /quit ends", file=sys.stderr)
        while True:
            if messages:
                text = messages.pop(0)
            elif interactive:
                try:
                    text = input("you: ")
                except EOFError:
                    break
            else:
                break
            if text.strip() in ("/quit", "/exit"):
                break
            if text.strip() == "/memos":
                for m in store.memos(args.user, None if cfg.memo_scope == "user" else args.session):
                    print(f"  #{m.id} [{m.session}] {m.topic}: {m.summary}")
                continue
            if not text.strip():
                continue
            res = bot.chat(text, user=args.user, session=args.session)
            if args.json:
                print(json.dumps(res.to_dict()), flush=True)
            else:
                print(_turn_human(res, args.show_memos), flush=True)
    return 0


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    at_least("port", args.port, 0)
    key = args.api_key if args.api_key is not None else os.environ.get("MEMOCHAT_API_KEY") or None
    if key is not None and not key.strip():
        raise BadInputError("--api-key must not be empty")
    cfg = _memo_config(args)
    prompts = load_prompts(args.prompts)
    with _generator(args) as gen:  # its connections closed once the server has shut down
        store = _db(args.db, must_exist=False)
        print(f"memochat: serving {getattr(gen, 'name', 'model')} with memory on http://{args.host}:{args.port}/v1, "
              f"memo browser at http://{args.host}:{args.port}/ (database {args.db})", file=sys.stderr)  # fmt: skip
        if key is None and not is_loopback(args.host):
            print(f"memochat: warning: {args.host} is reachable from other machines and no --api-key is set: "
                  "anyone who can connect can read, edit and delete the memos", file=sys.stderr)  # fmt: skip
        serve(MemoChat(gen, store, cfg, prompts), args.host, args.port, args.serve_name, key)
    return 0


# --------------------------------------------------------------------------- memos


def cmd_memos(args: argparse.Namespace) -> int:
    action = args.action
    if action == "import":
        check_input_file(args.file, "import file")
        read_export(args.file)  # checked whole before the database is touched
        with _db(args.db, must_exist=False) as store:
            got = store.import_jsonl(args.file)
        return report({"imported": got, "database": args.db}, args)
    out = check_output_file(args.file, [".jsonl"]) if action == "export" else None
    store = _db(args.db, must_exist=True)
    try:
        if action == "list":
            rows = [m.to_dict() for m in store.memos(args.user, args.session)]
            for r in rows:
                r.pop("dialogs")
            return report({"memos": rows, "sessions": store.sessions()}, args, _list_human)
        if action == "show":
            return report(store.memo(args.id).to_dict(), args, _show_human)
        if action == "export":
            assert out is not None
            n = store.export_jsonl(out, args.user)
            return report({"exported": n, "file": str(out)}, args)
        if action == "check":
            return report(store.check(), args)
        # delete
        if args.id is not None:
            n = store.delete_memos(list(args.id))
            return report({"deleted_memos": n}, args)
        if args.user is None:
            raise BadInputError("memos delete needs --id, or --user (and optionally --session)")
        n = store.delete(args.user, args.session)
        return report({"deleted_memos": n, "user": args.user, "session": args.session}, args)
    finally:
        store.close()


def _list_human(r: dict[str, Any]) -> str:
    lines = [f"#{m['id']} {m['user']}/{m['session']} turn {m['turn']}: {m['topic']}: {m['summary']}" for m in r["memos"]]
    return "\n".join(lines) or "no memos"


def _show_human(m: dict[str, Any]) -> str:
    return "\n".join([f"#{m['id']} {m['user']}/{m['session']} turn {m['turn']}", f"topic: {m['topic']}",
                      f"summary: {m['summary']}", "dialogs:", *("  " + d for d in m["dialogs"])])  # fmt: skip


# --------------------------------------------------------------------------- build-data / train


def cmd_build_data(args: argparse.Namespace) -> int:
    out = check_output_file(args.output, [".jsonl"])
    prompts = load_prompts(args.prompts)
    records = build_all(args.topiocqa, args.dialogsum, args.alpaca, prompts, max(0, args.seed))
    if args.size != "all":
        records = mix(records, int(args.size), args.seed)
    save_records(out, records)
    return report({"records": len(records), "by_type": counts(records), "file": str(out),
                   "official_1k_mix": OFFICIAL_MIX}, args)  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    at_least("steps", args.steps, 1)
    at_least("batch-size", args.batch_size, 1)
    at_least("max-len", args.max_len, 16)
    at_least("heldout", args.heldout, 1)
    at_least("eval-every", args.eval_every, 1)
    positive("lr", args.lr)
    check_input_file(args.data, "--data file", [".jsonl"])
    records = load_records(args.data)
    lora = LoraConfig(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout) if args.method == "lora" else None
    check_output_dir(args.output, KIND_TRAIN)
    if args.model.startswith(("http://", "https://")):
        raise BadInputError("train needs a local model (smollm2, tiny, a folder or a .gguf file), not a server URL")
    gen: Any = _generator(args)
    with gen:
        out = claim_output_dir(args.output, KIND_TRAIN)
        template = "chat" if getattr(gen, "template", "raw") == "chat" else "raw"
        res = tune(gen.model, gen.tokenizer, records, out, method=args.method, lora=lora, steps=args.steps, lr=args.lr,
                   batch_size=args.batch_size, max_len=args.max_len, heldout_per_task=args.heldout, eval_every=args.eval_every,
                   seed=max(0, args.seed), template=template, progress=not args.no_progress)  # fmt: skip
    res.plot = str(plot_curves(res, out / "curves.png"))
    save_json(out / "curves.json", res.to_dict())
    return report(res.to_dict(), args, _train_human)


def _train_human(r: dict[str, Any]) -> str:
    rows = [f"{r['method']} tuning, {r['steps']} steps, {r['trainable']:,} trainable parameters, {r['train_examples']} examples",
            f"{'task':<22} {'held-out loss before':>21} {'after':>8}"]  # fmt: skip
    rows += [f"{t:<22} {r['before'][t]:>21.4f} {r['after'][t]:>8.4f}" for t in r["before"]]
    rows.append(f"curves: {r['plot']}")
    return "\n".join(rows)


# --------------------------------------------------------------------------- eval


def cmd_eval_mtbench(args: argparse.Namespace) -> int:
    dialogues = load_mtbench(args.data)
    out = check_output_file(args.output, [".json"])
    prompts = load_prompts(args.prompts)
    result: dict[str, Any] = {}
    with ExitStack() as closing:  # the generators' connections closed on every exit
        judge_gen = None
        if args.judge:
            judge_gen = closing.enter_context(load_generator(args.judge, model_name=args.judge_model, api_key=args.judge_api_key,
                                                             timeout=args.timeout))  # fmt: skip
        if not args.answered:
            cfg = _memo_config(args)
            gen = closing.enter_context(_generator(args))
            with MemoStore(":memory:" if args.db is None else args.db) as store:
                dialogues = mt_answer(MemoChat(gen, store, cfg, prompts), dialogues, show_progress=not args.no_progress)
        result["dialogues"] = dialogues
        if judge_gen is not None:
            result.update(mt_judge(dialogues, judge_gen, prompts, show_progress=not args.no_progress))
    save_json(out, result)
    summary = {k: v for k, v in result.items() if k != "dialogues"}
    summary["file"] = str(out)
    return report(summary, args)


def cmd_eval_consistency(args: argparse.Namespace) -> int:
    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise BadInputError(f"unknown variant(s) {', '.join(bad)}; choose from {', '.join(VARIANTS)}")
    at_least("conversations", args.conversations, 1)
    at_least("sessions", args.sessions, 2)
    at_least("turns", args.turns, 8)
    convs = load_conversations(args.data) if args.data else make_conversations(args.conversations, args.sessions, args.turns, max(0, args.seed))
    cfg = _memo_config(args)
    prompts = load_prompts(args.prompts)
    out = check_output_dir(args.output, KIND_EVAL) if args.output else None
    answers: list[dict[str, Any]] = []
    with _generator(args) as gen:
        if out is not None:
            out = claim_output_dir(out, KIND_EVAL)
        results = [run_variant(v, gen, convs, cfg, prompts, prefilter_k=args.variant_k, show_progress=not args.no_progress,
                               on_turn=answers.append) for v in variants]  # fmt: skip
    result = {"backend": args.model, "variants": results, "markdown": table(results, args.model), "kinds": list(KINDS),
              "conversations": len(convs), "probes_per_variant": results[0]["probes"] if results else 0}  # fmt: skip
    if out is not None:
        save_table(out, result)
        save_json(out / "answers.json", answers)
        save_conversations(out / "conversations.json", convs)
    return report(result, args, lambda r: r["markdown"])


# --------------------------------------------------------------------------- bench / demo


def cmd_bench(args: argparse.Namespace) -> int:
    at_least("kills", args.kills, 0)
    at_least("turns", args.turns, 1)
    try:
        sizes = [int(s) for s in args.memos.split(",")] if args.memos else []
    except ValueError:
        sizes = [0]
    if any(s < 1 for s in sizes):
        raise BadInputError(f"--memos must be comma-separated positive integers, got {args.memos!r}")
    out = check_output_dir(args.output, KIND_BENCH) if args.output else None
    if out is not None:
        out = claim_output_dir(out, KIND_BENCH)
    result: dict[str, Any] = {"overhead": [], "reliability": None, "two_writers": None}
    embedder = None
    if args.prefilter in ("embedding", "auto") and sizes:
        try:
            embedder = Embedder()
        except (BadInputError, ImportError, OSError):
            embedder = None
    for n in sizes:
        kind = args.prefilter if args.prefilter != "auto" else ("embedding" if embedder else "bm25")
        result["overhead"].append(overhead(n, kind, args.turns, embedder=embedder if kind == "embedding" else None))
    if args.kills:
        result["reliability"] = kill_test(args.kills, max(0, args.seed))
        result["two_writers"] = two_writers(max(10, args.turns), max(0, args.seed))
    lines = ["| memos | prefilter | overhead / turn (median, p90) | of which cosine top-k | query embedding | options shown |",
             "|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["overhead"]:
        topk = "-" if r.get("cosine_topk_ms") is None else f"{r['cosine_topk_ms']:.2f} ms"
        lines.append(f"| {r['memos']:,} | {r['prefilter']} | {r['overhead_ms_median']:.2f} ms, {r['overhead_ms_p90']:.2f} ms | {topk} | "
                     f"{r['embed_ms_median']:.1f} ms | {r['options_shown']} |")  # fmt: skip
    result["markdown"] = "\n".join(lines)
    if out is not None:
        save_table(out, result)
    return report(result, args, _bench_human)


def _bench_human(r: dict[str, Any]) -> str:
    out = [r["markdown"]]
    if r["reliability"]:
        rel = r["reliability"]
        out.append(f"kill test: {rel['kills']} kills, {rel['turns_committed']} turns committed, "
                   f"{'store consistent, nothing lost' if rel['ok'] else 'FAILED: ' + '; '.join(rel['failures'])}")  # fmt: skip
        tw = r["two_writers"]
        out.append(f"two writers: {tw['committed']} turns committed, session at turn {tw['session_turns']}: {'consistent' if tw['ok'] else 'INCONSISTENT'}")
    return "\n".join(out)


def cmd_demo(args: argparse.Namespace) -> int:
    at_least("answer-tokens", args.answer_tokens, 1)
    out = claim_output_dir(args.output, KIND_DEMO)
    res = run_demo(out, model=args.model, answer_tokens=args.answer_tokens, progress=not args.json)
    return report(res, args, _demo_human)


def _demo_human(r: dict[str, Any]) -> str:
    lines = []
    for i, t in enumerate(r["turns"]):
        lines += [f"[{i + 1}] user: {t['user']}", f"    bot: {t['bot']}"]
        lines += [f"    [memo written] {m['topic']}: {m['summary']}" for m in t["written"]]
        lines += [f"    [memo used] {m['topic']}" for m in t["retrieved"]]
    lines.append(r["figure"])
    return "\n".join(lines)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``memochat`` parser; every subcommand carries its handler as ``func``."""
    parser, sub = make_parser(PROG, "Long-range memory for chat LLMs through self-written memos (MemoChat)", __version__)

    p = add_common(sub.add_parser("chat", help="chat with memory (interactive, or --message ... for scripted turns)"))
    p.add_argument("--db", default="memochat.db", help="SQLite memory file (created if missing)")
    p.add_argument("--user", default="default")
    p.add_argument("--session", default="default")
    p.add_argument("--message", "-m", action="append", help="a user message (repeatable); without it, read stdin")
    p.add_argument("--show-memos", action="store_true", help="print the memos written and used each turn")
    _add_model(p)
    _add_memo(p)
    p.set_defaults(func=cmd_chat)

    p = add_common(sub.add_parser("serve", help="OpenAI-compatible /v1/chat/completions with memory, and the memo browser at /"))
    p.add_argument("--db", default="memochat.db")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--serve-name", default="memochat", help="model name the server reports")
    p.add_argument("--api-key", default=None,
                   help="bearer token required on /v1 and /api (default: $MEMOCHAT_API_KEY, else none); "
                        "the model server's own token is --model-api-key")  # fmt: skip
    _add_model(p, key_flags=("--model-api-key",))
    _add_memo(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("memos", help="list, show, export, import, delete or check stored memos")
    msub = p.add_subparsers(dest="action", required=True)
    for name, helptext in (("list", "memos (of a user / session)"), ("show", "one memo with its dialogue"),
                           ("export", "everything as JSONL"), ("import", "a JSONL export (checked whole first)"),
                           ("delete", "memos by id, a session or a user"), ("check", "the store's consistency")):  # fmt: skip
        q = add_common(msub.add_parser(name, help=helptext))
        q.add_argument("--db", required=True)
        if name in ("list", "delete", "export"):
            q.add_argument("--user", default=None, help="only this user" if name == "export" else None)
        if name in ("list", "delete"):
            q.add_argument("--session", default=None)
        if name == "show":
            q.add_argument("id", type=int)
        if name == "delete":
            q.add_argument("--id", type=int, action="append")
        if name in ("export", "import"):
            q.add_argument("file")
        q.set_defaults(func=cmd_memos, action=name)
    p.set_defaults(func=lambda a: p.error("choose an action"))

    p = add_common(sub.add_parser("build-data", help="instruction data for the three tasks from local TopiOCQA / DialogSum / Alpaca-GPT4"))
    p.add_argument("--topiocqa", default=None, help="topiocqa_train.json")
    p.add_argument("--dialogsum", default=None, help="dialogsum.train.jsonl")
    p.add_argument("--alpaca", default=None, help="alpaca_gpt4.json (Flacuna release)")
    p.add_argument("--size", choices=("1000", "10000", "all"), default="all", help="the 1k / 10k mix, or every record")
    p.add_argument("--prompts", default=None)
    p.add_argument("--output", "-o", required=True, help="output .jsonl")
    p.set_defaults(func=cmd_build_data)

    p = add_common(sub.add_parser("train", help="LoRA or full fine-tuning on build-data output (accelerate)"))
    p.add_argument("--data", required=True, help=".jsonl from build-data")
    p.add_argument("--method", choices=METHODS, default="lora")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (lora), 2e-5 (full, the paper's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=1024, help="tokens per example (the paper: 2048)")
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=int, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--heldout", type=int, default=4, help="held-out examples per task")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--output", "-o", required=True)
    _add_model(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="MT-Bench+ (with an OpenAI-compatible judge) or the consistency benchmark")
    esub = p.add_subparsers(dest="what", required=True)
    q = add_common(esub.add_parser("mtbench", help="answer an MT-Bench+ file with memochat, then judge"))
    q.add_argument("--data", required=True, help="mtbenchplus.json (official format)")
    q.add_argument("--answered", action="store_true", help="the file's chatbot turns are already answered: judge only")
    q.add_argument("--judge", default=None, help="OpenAI-compatible base URL of the judge")
    q.add_argument("--judge-model", default="gpt-4")
    q.add_argument("--judge-api-key", default=None)
    q.add_argument("--db", default=None, help="keep the memos in this database (default: in memory)")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--output", "-o", required=True, help="output .json")
    _add_model(q)
    _add_memo(q)
    q.set_defaults(func=cmd_eval_mtbench)
    q = add_common(esub.add_parser("consistency", help="planted facts, later probes, exact match; no judge"))
    q.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)} (default all)")
    q.add_argument("--data", default=None, help="conversations JSON (default: generated)")
    q.add_argument("--conversations", type=int, default=4)
    q.add_argument("--sessions", type=int, default=3)
    q.add_argument("--turns", type=int, default=20, help="user turns per session")
    q.add_argument("--variant-k", type=int, default=4, help="prefilter_k of the memochat+prefilter variant")
    q.add_argument("--no-progress", action="store_true")
    q.add_argument("--output", "-o", default=None, help="folder for results.json, table.md, answers.json")
    _add_model(q, default="oracle")
    _add_memo(q)
    q.set_defaults(func=cmd_eval_consistency)
    p.set_defaults(func=lambda a: p.error("choose mtbench or consistency"))

    p = add_common(sub.add_parser("bench", help="pipeline overhead per turn, kill test, two writers"))
    p.add_argument("--memos", default="10,10000", help="stored memo counts to time (comma-separated)")
    p.add_argument("--prefilter", choices=PREFILTERS, default="auto")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--kills", type=int, default=20, help="kills of a turn-running process (0: skip)")
    p.add_argument("--output", "-o", default=None)
    p.set_defaults(func=cmd_bench)

    p = add_common(sub.add_parser("demo", help="a short memo conversation with SmolLM2 on the CPU"))
    p.add_argument("--model", default="smollm2")
    p.add_argument("--answer-tokens", type=int, default=64)
    p.add_argument("--output", "-o", default="memochat-demo")
    p.set_defaults(func=cmd_demo)
    return parser


main = dispatching_main(build_parser, PROG)

if __name__ == "__main__":
    raise SystemExit(main(None))
