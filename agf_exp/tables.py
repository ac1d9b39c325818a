"""The paper's six tables: which named rows each one has, the paper's value for each row, and the
baseline row each table is compared against.

A row's toggles live in exactly one place, its Hydra config ``conf/row/<row>.yaml`` (mode, PE,
PCM-V, SCO); this module only names rows and records what the paper measured. The sweep of table
N (``sweeps/table/tableN.yaml``) runs the rows listed here, and a test checks that the two agree.

The paper's metric is OpenNMT-py's validation accuracy (teacher-forced token accuracy, %) at the
end of training on WMT17 en->de with a 3+3-layer Transformer-BIG (the paper's Table 1; docs/paper.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# row name -> (the paper's label, the paper's validation accuracy)
PAPER_ROWS: Dict[str, Tuple[str, float]] = {
    "vanilla": ("Vanilla (QKV) + PE", 70.5911),
    "agf": ("AGF", 70.4511),
    "agf_m": ("AGF-M", 70.4863),
    "agf_pcmv": ("AGF + PCM-V", 70.7305),
    "agf_m_pcmv": ("AGF-M + PCM-V", 70.7582),
    "alibi_bl": ("ALiBi-B-L", 70.4849),
    "alibi_bl_pcmv_exp": ("ALiBi-B-L + PCM-V-Exp", 70.5174),
    "alibi_bl_mul_pcmv": ("ALiBi-B-L-Mul + PCM-V", 70.7582),
    "agf_m_sco_pe": ("AGF-M + SCO + PE", 70.8049),
    "agf_m_sco_pcmv_pe": ("AGF-M + SCO + PCM-V + PE", 70.9213),
}


@dataclass(frozen=True)
class Table:
    name: str  # table1 ... table6
    title: str
    rows: List[str] = field(default_factory=list)  # trained rows, in the paper's order
    baseline: Optional[str] = None  # the row every other row is compared against


TABLES: Dict[str, Table] = {t.name: t for t in [
    Table("table1", "Summary of experimental configurations and hardware environment", ["vanilla"]),
    Table("table2", "Performance comparison of different positional encoding methods",
          ["vanilla", "agf", "agf_m"], "vanilla"),
    Table("table3", "Output contribution calculation (worked example, no training)"),
    Table("table4", "PCM-V optimisation effect",
          ["vanilla", "agf", "agf_pcmv", "agf_m", "agf_m_pcmv"], "vanilla"),
    Table("table5", "Positional mechanisms and PCM-V optimisations (ALiBi variants)",
          ["alibi_bl", "alibi_bl_pcmv_exp", "alibi_bl_mul_pcmv"], "alibi_bl"),
    Table("table6", "Validation accuracy across optimisation combinations",
          ["vanilla", "agf_m_sco_pe", "agf_m_sco_pcmv_pe"], "vanilla"),
]}

# Table 1 of the paper: configuration item -> the paper's value
PAPER_SETUP: List[Tuple[str, str]] = [
    ("Base architecture", "Vanilla Transformer (Transformer-BIG: d_model 1024, 16 heads, FFN 4096)"),
    ("Dataset", "WMT17 (translation task, en-de)"),
    ("Number of layers", "3 encoder + 3 decoder (reduced from the default 6)"),
    ("Precision", "FP16 (half-precision) training"),
    ("Hardware", "single NVIDIA Tesla V100-PCIE-32GB"),
    ("Training duration", "about 15 hours per run"),
]

# Table 3 of the paper: two keys/values whose raw scores are equal once the coefficient is applied
PAPER_WORKED_EXAMPLE = {"raw": [100.0, 20.0], "coef": [0.1, 0.5]}


def table(name: str) -> Table:
    key = name.lower().replace("table_", "table")
    if key.isdigit():
        key = f"table{key}"
    if key not in TABLES:
        raise KeyError(f"unknown table {name!r}; the paper's tables are {', '.join(TABLES)}")
    return TABLES[key]
