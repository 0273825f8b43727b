"""Print the README's parameter tables from fmnist_exp/config.py (tests/test_project.py checks them).

    python scripts/gen_param_tables.py
"""

from fmnist_exp import config as C


def table(params: list[C.Param]) -> str:
    rows = ["| parameter | default | meaning |", "|---|---|---|"]
    for p in params:
        d = "''" if p.default == "" else (str(p.default).lower() if isinstance(p.default, bool) else p.default)
        rows.append(f"| `{p.name}` | `{d}` | {p.help} |")
    return "\n".join(rows)


def tables() -> str:
    order = ("tune", *C.FAMILIES, "register", "predict", "reproduce", "dashboard", "storage-proxy")
    return "\n\n".join(f"### {name}\n\n{table(C.command_params(name))}" for name in order)


if __name__ == "__main__":
    print(tables())
