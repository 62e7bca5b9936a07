"""One vocabulary of error codes: the enum, the README's troubleshooting table, the output schema
and the code that raises them agree."""

from __future__ import annotations

import re
from pathlib import Path

from i2v_worker.error_codes import TROUBLESHOOTING, ErrorCode
from i2v_worker.worker.schema import output_json_schema

ROOT = Path(__file__).resolve().parents[1]


def test_readme_troubleshooting_table_lists_exactly_the_enum():
    text = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- errors-table:start -->(.*?)<!-- errors-table:end -->", text, re.S)
    assert table, "README lacks the generated troubleshooting table"
    listed = re.findall(r"^\| `([a-z_]+)` \|", table.group(1), re.M)
    assert listed == [c.value for c in ErrorCode]
    assert set(TROUBLESHOOTING) == set(ErrorCode)


def test_output_schema_enumerates_the_codes():
    schema = output_json_schema()
    enum_def = schema["$defs"]["ErrorCode"]
    assert enum_def["enum"] == [c.value for c in ErrorCode]


def test_no_error_code_literal_is_left_in_the_source():
    """Codes are raised as ErrorCode members, never as string literals (`code="..."`)."""
    codes = "|".join(c.value for c in ErrorCode)
    pattern = re.compile(rf"""code\s*(=|==)\s*["']({codes})["']|(error_output|DeliveryError)\(\s*["']({codes})["']""")
    offenders = []
    for path in (ROOT / "src" / "i2v_worker").rglob("*.py"):
        if path.name == "error_codes.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_members_are_their_json_values():
    import json

    assert json.dumps({"error_code": ErrorCode.TIMEOUT}) == '{"error_code": "timeout"}'
    assert ErrorCode.TIMEOUT == "timeout" and f"{ErrorCode.MODEL_ERROR}" == "model_error"
