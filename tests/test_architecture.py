"""The import contracts in pyproject.toml hold: no cycles between modules, imports point
down the layers, and reading, mapping and writing never load TensorFlow or the model
loader. `lint-imports` checks the same from a shell."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlinter.configuration
    from importlinter.application.use_cases import lint_imports

    import batchpredict

    # The graph is of the checkout under test, not of an installed copy elsewhere.
    assert Path(batchpredict.__file__).resolve().is_relative_to(ROOT / "src")
    monkeypatch.chdir(ROOT)
    importlinter.configuration.configure()
    passed = lint_imports(str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True)
    report = capsys.readouterr().out
    assert passed, report
    assert "3 kept, 0 broken" in report
