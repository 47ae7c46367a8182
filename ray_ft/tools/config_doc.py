"""The configuration reference, made from ``FTConfig``'s own field docstrings.

``python -m ray_ft.tools.config_doc`` (``make docs``) writes ``docs/configuration.md``; a
test fails when a field has no docstring or the page differs from what this renders, so
the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import sys
from pathlib import Path
from typing import Any

from ray_ft import config as config_module
from ray_ft.config import CLUSTER_KEYS, FTConfig

__all__ = ["PAGE", "field_docs", "render"]

PAGE = Path("docs") / "configuration.md"

_HEADER = """\
# Configuration reference

<!-- Made by `make docs` from the docstrings of `ray_ft/config.py`; edit those, not this. -->

Every setting is a field of `FTConfig`; a plain dict with these keys works wherever a
config is taken (`FaultTolerantExecutor({"max_retries": 5})`, `optimize(..., config=)`,
`get_manager(config)`). Unknown keys are refused with the nearest valid key (`max_retrys`
→ did you mean `max_retries`?); a wrong type or range names the key and the value.

**Who owns a setting.** The *cluster* settings (liveness, health and breakers;
`ray_ft.config.CLUSTER_KEYS`) are fixed when the manager actor starts: a later driver that
passes other values gets a `RuntimeWarning` naming both and keeps the cluster's;
`get_manager().update_config.remote(cfg.to_dict())` changes them on purpose. The
*driver* settings (retries, backoff, timeouts, speculation, batching, checkpoints) are
each executor's and each `optimize()` run's own.

| key | default | owner | meaning |
|---|---|---|---|
"""


def field_docs() -> dict[str, str]:
    """Each ``FTConfig`` field's docstring (the string literal under it), by field name."""
    tree = ast.parse(inspect.getsource(config_module))
    cls = next(
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == FTConfig.__name__
    )
    docs: dict[str, str] = {}
    body = cls.body
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _default(field: dataclasses.Field[Any]) -> str:
    value = field.default
    if field.name == "retry_on":
        return "every system failure type"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value!r}`"


def render() -> str:
    """The whole page; raises when a field has no docstring."""
    docs = field_docs()
    rows = []
    for field in dataclasses.fields(FTConfig):
        doc = docs.get(field.name)
        if not doc:
            msg = (
                f"FTConfig.{field.name} has no docstring; add one under the field in "
                "ray_ft/config.py (it is the field's entry in the configuration reference)"
            )
            raise ValueError(msg)
        doc = re.sub(r"``([^`]+)``", r"`\1`", doc).replace("|", "\\|")
        owner = "cluster" if field.name in CLUSTER_KEYS else "driver"
        rows.append(f"| `{field.name}` | {_default(field)} | {owner} | {doc} |")
    return _HEADER + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the page (``--check``: exit 1 when the page on disk is stale)."""
    args = sys.argv[1:] if argv is None else argv
    page = render()
    if "--check" in args:
        current = PAGE.read_text() if PAGE.exists() else ""
        if current != page:
            print(f"{PAGE} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    print(f"wrote {PAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
