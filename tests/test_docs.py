"""The worked example in docs/training_hooks.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "training_hooks.md"


def test_plain_loop_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    example = next(b for b in blocks if "FakeData" in b)
    namespace: dict = {}
    exec(compile(example, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in out] == ["[gg]", "[gg]", "[dg]", "[dg]"]
    assert namespace["schedule"].switched_at == 2
