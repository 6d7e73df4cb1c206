"""catalog.split_name: names as DBAs write them, parsed in one place (docs/checks.md, "Names")."""

import pytest

from exporter.catalog import NamePart, split_name


def part(text: str, folded: str | None = None) -> NamePart:
    return NamePart(text, text if folded is None else folded)


@pytest.mark.parametrize("name,schema,obj", [
    ("invoices", None, part("invoices")),
    ("Billing.Invoices", part("Billing", "billing"), part("Invoices", "invoices")),  # raw: exact, else folded
    ('"Billing"."Invoices"', part("Billing"), part("Invoices")),  # quoted: exact only
    ('"Billing".Invoices', part("Billing"), part("Invoices", "invoices")),
    ('"my.schema"."a table"', part("my.schema"), part("a table")),
    ('"has""quote"', None, part('has"quote')),
    ('""""', None, part('"')),
    ("Ärger", None, part("Ärger")),  # PostgreSQL folds only A-Z in UTF-8
    ("ÄRGER_Z", None, part("ÄRGER_Z", "Ärger_z")),
    ('Sales Ops.Leads "2026"', part("Sales Ops", "sales ops"), part('Leads "2026"', 'leads "2026"')),  # raw, as written
    ('x"; DROP TABLE t; --', None, part('x"; DROP TABLE t; --', 'x"; drop table t; --')),
    ("a" * 63, None, part("a" * 63)),
])
def test_split_name(name, schema, obj):
    assert split_name(name) == (schema, obj)


@pytest.mark.parametrize("name,problem", [
    ('"Billing.Invoices', "unbalanced double quote"),
    ('"a""', "unbalanced double quote"),
    ('"Billing"x', "a quoted part must be followed by '.'"),
    ("billing.", "an empty part"),
    (".invoices", "an empty part"),
    ('""', "an empty part"),
    ("", "an empty part"),
    ("a.b.c", "3 dot-separated parts"),
    ("a..b", "3 dot-separated parts"),
    ("é" * 32, "63-byte limit"),  # 64 bytes in UTF-8
])
def test_malformed_names(name, problem):
    with pytest.raises(ValueError, match=problem):
        split_name(name)
