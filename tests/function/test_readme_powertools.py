"""The README's "Moving from Powertools" example runs as written, on the memory layer."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _section_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Moving from Powertools\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds exactly one example"
    return blocks[0]


def test_the_migration_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    code = _section_code()
    assert "InMemoryPersistenceLayer()" in code
    module = types.ModuleType("readme_powertools")  # dataclasses look their module up
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, str(README), "exec"), module.__dict__)  # its asserts are the test
    assert callable(module.__dict__["handler"])
