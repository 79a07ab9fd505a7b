"""The front door's subcommands (issue 17): ``mmprefer recommend``, ``mmprefer explain`` and ``mmprefer serve``.

Registered by :mod:`recbole_mmprefer.cli` like every stage; they read a finished run through
:class:`~recbole_mmprefer.serving.session.RecommendSession` and print text or JSON. The heavy imports (torch,
transformers) wait until a command runs, so that building the parser stays quick for every other command.
"""

from __future__ import annotations

import argparse
import json
from typing import Callable, List

from recbole_mmprefer.errors import InputError


def _session(args: argparse.Namespace, overrides: List[str]):
    from recbole_mmprefer.cli import stage_config  # the CLI's config builder (cli imports this module lazily)
    from recbole_mmprefer.serving.session import RecommendSession

    return RecommendSession(stage_config(args, overrides))


def _print_pair(session, item: dict, indent: str = "   ") -> None:
    from recbole_mmprefer.retrieval.paths import PathResult

    lines = session.describe_paths(PathResult.from_record(item["paths"])) if "paths" in item else []
    for number, line in enumerate(lines, start=1):
        print(f"{indent}path {number}: {line}")
    if "paths" in item and not lines:
        print(f"{indent}(no retrieval path joins them: {item['paths']['status']})")


def _explain_printing(explainer, record: dict, as_json: bool, indent: str) -> str:
    """The explanation of a paths record; in text mode its pieces are printed as they come."""
    if as_json:
        return explainer.explain(record)
    print(f"{indent}explanation: ", end="", flush=True)
    text = explainer.explain(record, on_text=lambda piece: print(piece, end="", flush=True))
    print()
    return text


def cmd_recommend(args: argparse.Namespace, overrides: List[str]) -> None:
    session = _session(args, overrides)
    if args.list_users:
        found = session.users(args.query or "", args.limit)
        if args.json:
            print(json.dumps(found, indent=1))
            return
        print(f"{found['total']} users" + (f" matching {args.query!r}" if args.query else "")
              + (f"; the first {len(found['users'])}:" if found["total"] > len(found["users"]) else ":"))
        for user in found["users"]:
            print(f"  {user['user_id']}  ({user['interactions']} interactions)  {user['profile'][:80]}")
        return
    if args.user is None:
        raise InputError("--user U is required (or --list_users to see them)")
    found = session.recommend(args.user, args.topk)
    explainer = None
    if args.explain:
        from recbole_mmprefer.serving.explain import PairExplainer

        explainer = PairExplainer(session.config, node_text=session.node_text)
    if args.json:
        for item in found["items"]:
            if explainer is not None:
                item["explanation"] = explainer.explain(item["paths"])
        print(json.dumps(found, indent=1))
        return
    source = ("MMPSASRec's full-sort scores" if found["source"] == "mmpsasrec"
              else "the most interacted items: the user has no history the recommender saw")
    print(f"Top {len(found['items'])} items for user {found['user_id']} ({source}; the user's "
          f"{len(session.seen_items(found['user_id']))} items left out):")
    for item in found["items"]:
        score = f"  score {item['score']:.3f}" if item["score"] is not None else ""
        print(f"{item['rank']}. {item['title']} (item {item['item_id']}){score}")
        _print_pair(session, item)
        if explainer is not None:
            _explain_printing(explainer, item["paths"], False, "   ")


def cmd_explain(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.serving.explain import PairExplainer

    session = _session(args, overrides)
    record = session.paths(args.user, args.item).to_record()
    explainer = PairExplainer(session.config, node_text=session.node_text)
    card = session.item_card(record["item_id"])
    if not args.json:
        print(f"User {record['user_id']} and {card['title']} (item {record['item_id']}), explained by "
              f"{explainer.description}:")
        _print_pair(session, {"paths": record}, indent="  ")
    text = _explain_printing(explainer, record, args.json, "  ")
    if args.json:
        print(json.dumps({**record, **card, "explanation": text, "explainer": explainer.description}, indent=1))


def cmd_serve(args: argparse.Namespace, overrides: List[str]) -> None:
    from recbole_mmprefer.cli import stage_config
    from recbole_mmprefer.serving.app import serve

    serve(stage_config(args, overrides), host=args.host, port=args.port)


def add_serving_commands(stage: Callable) -> None:
    """recommend, explain and serve: the front door over a finished run (``stage`` adds a subcommand with the
    shared options)."""
    recommend = stage("recommend", "A user's top-k items from MMPSASRec (history left out), each with its "
                      "retrieval paths and, with --explain, its explanation")
    recommend.add_argument("--user", "-u", default=None, help="the user's id (token)")
    recommend.add_argument("--topk", "-k", type=int, default=5, help="items to recommend (default 5)")
    recommend.add_argument("--explain", action="store_true", help="explain each item (the run's tuned explainer, "
                           "else pipeline_explainer: the bundled adapter by default)")
    recommend.add_argument("--json", action="store_true", help="print JSON instead of text")
    recommend.add_argument("--list_users", "--list-users", action="store_true", help="list the users instead")
    recommend.add_argument("--query", default=None, help="with --list_users: ids or profiles containing this")
    recommend.add_argument("--limit", type=int, default=20, help="with --list_users: how many (default 20)")
    recommend.set_defaults(handler=cmd_recommend)
    explain = stage("explain", "One pair's retrieval paths and explanation (the run's tuned explainer, else "
                    "pipeline_explainer)")
    explain.add_argument("--user", "-u", required=True, help="the user's id (token)")
    explain.add_argument("--item", "-i", required=True, help="the item's id (token)")
    explain.add_argument("--json", action="store_true", help="print JSON instead of text")
    explain.set_defaults(handler=cmd_explain)
    serve = stage("serve", "A local web app and JSON API over the run: users, histories, recommendations, "
                  "paths and explanations")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.set_defaults(handler=cmd_serve)
