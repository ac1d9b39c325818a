"""Learning-curve fits (the paper's Figure 5): how high would validation accuracy go?

The paper fits "a power-law learning curve" to ten per-epoch accuracies and reads off a ceiling
without saying which form. We fit, by least squares on the accuracies (scipy ``curve_fit``):

- saturating power law  ``y = a - b * x^(-c)``   (b > 0, c > 0): the ceiling is ``a``;
- saturating exponential ``y = a - b * exp(-c * x)`` (b > 0, c > 0), for comparison: ceiling ``a``.

For each form: the parameters with standard errors from the covariance of the fit, a 95%
Student-t interval for the ceiling (n - 3 degrees of freedom), R², RMSE and AIC (Gaussian errors,
``n log(RSS/n) + 2k``), and leave-last-out: the form is fitted without the last point and the error
of its prediction of that point is reported (how well each form extrapolates). ``x`` is the epoch
(1, 2, ...) or, for a run dir, ``epoch_fraction`` of each evaluation.

A ceiling must be a possible number and an estimate: for an accuracy in % the fit is constrained
to ``a <= 100`` (``upper``), and a ceiling whose 95% interval is wider than
:data:`MAX_CEILING_CI_WIDTH` points, or that sits on the bound, or whose interval is undefined, is
reported as "not identifiable from N epochs" instead of as a number. (On the paper's own ten
Figure-5 scores the power law's ceiling is 71.53 [71.41, 71.65]: well inside both limits.)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..runfiles import read_jsonl

#: a ceiling with a 95% interval wider than this (in the metric's units: accuracy points) is no estimate
MAX_CEILING_CI_WIDTH = 10.0
#: the largest possible value of a percentage metric (val_acc): the ceiling's upper bound
ACCURACY_MAX = 100.0

FORMS = {
    "power": ("a - b * x^(-c)", lambda x, a, b, c: a - b * np.power(x, -c)),
    "exponential": ("a - b * exp(-c * x)", lambda x, a, b, c: a - b * np.exp(-c * x)),
}


@dataclass
class CurveFit:
    form: str
    formula: str
    a: float
    b: float
    c: float
    stderr: List[float]  # of a, b, c (nan where the covariance is undefined)
    ceiling: float
    ceiling_ci: Tuple[float, float]
    r2: float
    rmse: float
    aic: float
    loo_last_error: Optional[float]  # prediction of the last point from the others, minus the truth
    n: int = 0  # points fitted
    upper: Optional[float] = None  # the bound on the ceiling the fit was constrained to
    at_bound: bool = False  # the fitted ceiling sits on ``upper``
    identifiable: bool = True  # a finite 95% interval of at most MAX_CEILING_CI_WIDTH, not on the bound

    def ceiling_text(self, digits: int = 2) -> str:
        """``"71.53 [71.41, 71.65]"``, or why there is no number."""
        if not self.identifiable:
            why = "on the bound" if self.at_bound else f"95% interval wider than {MAX_CEILING_CI_WIDTH:g}"
            return f"not identifiable from {self.n} epochs ({why})"
        lo, hi = self.ceiling_ci
        return f"{self.ceiling:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"

    def predict(self, x) -> np.ndarray:
        return FORMS[self.form][1](np.asarray(x, dtype=float), self.a, self.b, self.c)


def _initial(form: str, x: np.ndarray, y: np.ndarray) -> Tuple[float, float, float]:
    span = max(float(y.max() - y.min()), 1e-3)
    a0 = float(y.max()) + 0.1 * span
    c0 = 0.5 if form == "power" else 1.0 / max(float(x.max() - x.min()), 1e-3)
    if form == "power":
        b0 = (a0 - float(y[0])) * float(x[0]) ** c0
    else:
        b0 = (a0 - float(y[0])) * math.exp(c0 * float(x[0]))
    return a0, max(b0, 1e-6), c0


def _fit_params(form: str, x: np.ndarray, y: np.ndarray, upper: Optional[float] = None):
    from scipy.optimize import curve_fit

    fn = FORMS[form][1]
    best = None
    a0, b0, c0 = _initial(form, x, y)
    a_max = np.inf if upper is None else upper
    if upper is not None:  # start inside the feasible range
        a0 = min(a0, float(y.max()) + 0.5 * (upper - float(y.max())))
        b0 = (a0 - float(y[0])) * (float(x[0]) ** c0 if form == "power" else math.exp(c0 * float(x[0])))
    for c_start in (c0, c0 * 0.2, c0 * 3.0, 1.0):  # a few starts: the fit can be flat in c
        try:
            params, cov = curve_fit(fn, x, y, p0=(a0, max(b0, 1e-6), c_start),
                                    bounds=([-np.inf, 0, 1e-6], [a_max, np.inf, np.inf]), maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        rss = float(np.sum((fn(x, *params) - y) ** 2))
        if best is None or rss < best[2]:
            best = (params, cov, rss)
    if best is None:
        raise ValueError(f"the {form} fit did not converge")
    return best


def fit_curve(x: Sequence[float], y: Sequence[float], form: str = "power", upper: Optional[float] = None) -> CurveFit:
    """Fit one form to (x, y); needs at least 4 points (3 parameters + 1 degree of freedom).
    ``upper`` bounds the ceiling (:data:`ACCURACY_MAX` for an accuracy in %)."""
    from scipy import stats

    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}; use one of {sorted(FORMS)}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y) or len(x) < 4:
        raise ValueError(f"a learning-curve fit needs at least 4 (x, y) points, got {len(x)}")
    if np.any(x <= 0):
        raise ValueError("x (epochs) must be positive")
    if upper is not None and np.any(y > upper):
        raise ValueError(f"values above the bound {upper:g}: {y[y > upper].tolist()}")
    params, cov, rss = _fit_params(form, x, y, upper)
    n = len(x)
    stderr = [float(math.sqrt(v)) if np.isfinite(v) and v >= 0 else float("nan") for v in np.diag(cov)]
    half = float(stats.t.ppf(0.975, n - 3)) * stderr[0]
    tss = float(np.sum((y - y.mean()) ** 2))
    loo = None
    if n >= 5:
        try:
            p_loo, _, _ = _fit_params(form, x[:-1], y[:-1], upper)
            loo = float(FORMS[form][1](x[-1], *p_loo) - y[-1])
        except ValueError:
            loo = None
    a, b, c = (float(v) for v in params)
    at_bound = upper is not None and a >= upper - 1e-6 * max(1.0, abs(upper))
    lo, hi = a - half, a + half
    if upper is not None:
        hi = min(hi, upper)
    identifiable = bool(np.isfinite(half)) and not at_bound and 2 * half <= MAX_CEILING_CI_WIDTH
    return CurveFit(form, FORMS[form][0], a, b, c, stderr, a, (lo, hi),
                    1.0 - rss / tss if tss > 0 else float("nan"), math.sqrt(rss / n),
                    n * math.log(max(rss, 1e-300) / n) + 2 * 3, loo, n, upper, bool(at_bound), identifiable)


def fit_learning_curve(x: Sequence[float], y: Sequence[float], upper: Optional[float] = None) -> Dict[str, CurveFit]:
    return {form: fit_curve(x, y, form, upper) for form in FORMS}


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """The evaluations a trainer appended to ``metrics.jsonl`` (empty when the file is missing); a
    line that does not parse is a :class:`~agf_exp.runfiles.RunFileError` naming it."""
    return read_jsonl(path)


def curve_from_run(run_dir: Path, metric: str = "val_acc") -> Tuple[List[float], List[float]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give a run dir written by the trainer, or values=[...]")
    evals = read_metrics(path)
    if evals and metric not in evals[0]:
        raise ValueError(f"metric={metric!r} is not in metrics.jsonl; it has {sorted(evals[0])}")
    return [e["epoch_fraction"] for e in evals], [e[metric] for e in evals]


def to_markdown(fits: Dict[str, CurveFit], x, y) -> str:
    lines = [f"{len(x)} points, x = {x[0]:g} .. {x[-1]:g}, last y = {y[-1]:.4f}", "",
             "| form | ceiling a | 95% CI | b | c | R² | RMSE | AIC | last point left out: prediction error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for f in fits.values():
        loo = "–" if f.loo_last_error is None else f"{f.loo_last_error:+.4f}"
        ceiling, ci = (f"{f.ceiling:.4f}", f"[{f.ceiling_ci[0]:.4f}, {f.ceiling_ci[1]:.4f}]") if f.identifiable \
            else (f.ceiling_text(), "–")
        lines.append(f"| {f.formula} | {ceiling} | {ci} | "
                     f"{f.b:.4g} | {f.c:.4g} | {f.r2:.5f} | {f.rmse:.4f} | {f.aic:.2f} | {loo} |")
    best = min(fits.values(), key=lambda f: f.aic)
    lines += ["", f"Lower AIC: {best.form} ({best.formula})."]
    return "\n".join(lines) + "\n"


def plot(fits: Dict[str, CurveFit], x, y, path: Path, title: str = "learning curve") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(x, y, "o", color="black", label="measured")
    grid = np.linspace(min(x), max(x) * 2.0, 200)
    for f in fits.values():
        line, = ax.plot(grid, f.predict(grid), label=f"{f.formula}: ceiling {f.ceiling_text()}")
        if f.identifiable:
            ax.axhline(f.ceiling, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def as_dict(fits: Dict[str, CurveFit]) -> Dict[str, dict]:
    return {k: asdict(v) for k, v in fits.items()}


def plot_run_curves(run_dir: Path, out: Optional[Path] = None) -> Optional[Path]:
    """``<run dir>/curves.png`` (or ``out``): validation accuracy and training/validation loss per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not evals:
        return None
    x = [e["epoch_fraction"] for e in evals]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(x, [e["val_acc"] for e in evals], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy (%)")
    ax2.plot(x, [e["val_loss"] for e in evals], marker="o", label="validation")
    train = [(xi, e["train_loss"]) for xi, e in zip(x, evals) if e.get("train_loss") is not None]
    if train:
        ax2.plot(*zip(*train), marker="o", label="training (smoothed)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(out) if out is not None else Path(run_dir) / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
