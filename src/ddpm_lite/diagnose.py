"""How `ddpm_lite.exercises` compares a learner's function with the library's and says what is wrong.

A checker draws float64 inputs, calls both functions and raises `CheckFailed` with the message to print:

1. `call` runs the learner's function on copies of the inputs: NotImplementedError becomes "not implemented yet",
   any other exception its type, message and the learner's line, with a hint for the usual causes (a (B,) table that
   does not broadcast, t past the end, math.sqrt on a tensor); changing an input in place is an error too.
2. `expect_like` checks the type, shape and dtype of the result against the library's.
3. `mismatch` finds the examples (first dimension) whose largest difference exceeds RTOL times the example's scale
   (its largest value in the library's output) plus ATOL, and summarises the differences.
4. `explain_linear`, for formulas that combine known terms (q_sample: x_0 and eps), regresses the learner's output,
   example by example, on those terms by least squares. Each fitted coefficient that differs from the paper's is
   reported with its value, and `explain_value` names the known mistake it equals: a formula variant from
   `mutations` (no square root, alpha_t for alpha_bar_t, t off by one, ...), a checker's own list, another term's
   coefficient (swapped), the opposite sign, or 0 (a missing term).

Formulas are functions of a namespace `q` of per-example (N,) float64 tables and `q.sqrt`, so that a mutation can
replace a table or the square root and evaluate the same formula again. `check_linear` runs the whole flow for a
checker whose formula is a linear combination; the inputs every checker shares (`schedule_cases`, `tables`,
`MUTATIONS`) are at the end.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

from ddpm_lite.schedules import NoiseSchedule

# Per example: max |yours - library| <= RTOL * max |library| + ATOL. The inputs are float64, but a table read in
# float32 (as notebook 04's `.float()` does) costs up to 6e-4 of 1 - alpha_bar near t = 0 (float32's 6e-8 over
# 1e-4); every formula slip the checkers know is off by 1% or more at some t.
RTOL, ATOL = 1e-3, 1e-8
MATCH = dict(rtol=1e-3, atol=1e-9)  # a fitted coefficient "equals" the paper's value or a known mistake
Formula = Callable[[SimpleNamespace], Tensor]  # q -> (N,) float64, one value per example
Mutation = tuple[str, Callable[[SimpleNamespace], SimpleNamespace]]  # (what it changes, q -> changed q)

_TENSOR_T_HINT = ("t is a (B,) tensor of timesteps here, so .item() and math.sqrt do not apply: index the (T,) "
                  "tables with it and use tensor operations (torch.sqrt, .sqrt())")
_HINTS = (  # (fragment of the error message, hint)
    ("The size of tensor", "a table indexed with t has shape (B,); reshape it to (B, 1, ..., 1) to broadcast against "
                           "a (B, C, H, W) batch, e.g. table[t].reshape(-1, *[1] * (x.ndim - 1)) "
                           "(ddpm_lite.schedules.extract does this)"),
    ("out of bounds", "code timesteps run over 0, ..., T-1 (code t is the paper's t + 1), so t + 1 goes past the end"),
    ("cannot be converted to Scalar", _TENSOR_T_HINT),
    ("only one element tensors", _TENSOR_T_HINT),
    ("must be real number, not Tensor", _TENSOR_T_HINT),
    ("math domain error", "math.sqrt of a negative number: a ratio of alpha_bars the wrong way round, or "
                          "alpha_bar[-1] (the last entry) read where the clean data's alpha_bar = 1 belongs?"),
)


class CheckFailed(Exception):
    """Raised inside a checker with the message to print; `report` prints it and returns False."""


def report(check: str, run: Callable[[], str]) -> bool:
    """Run a checker's body: print `check: <success line>` and return True, or `check: <why not>` and return False."""
    try:
        message = run()
    except CheckFailed as failure:
        print(f"{check}: {failure}")
        return False
    print(f"{check}: {message}")
    return True


def name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


def call(fn: Callable, args: dict[str, object], *, case: str, solution: str):
    """fn(*args.values()) on copies of the tensor arguments; every way it can go wrong becomes a CheckFailed."""
    copies = {key: value.clone() if isinstance(value, Tensor) else value for key, value in args.items()}
    try:
        out = fn(*copies.values())
    except NotImplementedError:
        raise CheckFailed(f"{name_of(fn)} is not implemented yet; the solution is in {solution}") from None
    except Exception as error:  # the learner's bug, whatever it is, becomes a message
        raise CheckFailed(_describe_error(fn, error, case, list(args))) from None
    for key, value in args.items():
        if isinstance(value, Tensor) and not torch.equal(value, copies[key]):
            raise CheckFailed(f"{name_of(fn)} changed its argument {key} in place on {case}; return a new tensor "
                              f"instead (x = x + ..., not x += ...)")
    return out


def _describe_error(fn: Callable, error: Exception, case: str, names: list[str]) -> str:
    message = f"{name_of(fn)} raised {type(error).__name__}: {error} on {case}"
    if isinstance(error, TypeError) and "argument" in str(error):
        message += f"\n  hint: the checker calls {name_of(fn)}({', '.join(names)})"
    frames = [f for f in traceback.extract_tb(error.__traceback__)[1:]  # [0] is `call` itself
              if f"{os.sep}torch{os.sep}" not in f.filename]
    if frames:
        line = (frames[-1].line or "").strip()
        message += f"\n  at line {frames[-1].lineno} of {frames[-1].name}" + (f": {line}" if line else "")
    hints = [hint for fragment, hint in _HINTS if fragment in str(error)]
    return message + (f"\n  hint: {hints[0]}" if hints else "")


def expect_like(fn: Callable, yours: object, library: Tensor, case: str, hint: str = "") -> Tensor:
    """Fail unless `yours` is a tensor of the library's shape and dtype; return it."""
    if not isinstance(yours, Tensor):
        raise CheckFailed(f"{name_of(fn)} returned a {type(yours).__name__} on {case}; expected a tensor of shape "
                          f"{tuple(library.shape)}{hint}")
    if yours.shape != library.shape:
        raise CheckFailed(f"{name_of(fn)} returned shape {tuple(yours.shape)} on {case}; the library returns "
                          f"{tuple(library.shape)}{hint}")
    if yours.dtype != library.dtype:
        raise CheckFailed(f"{name_of(fn)} returned {yours.dtype} on {case} where the library returns "
                          f"{library.dtype}: keep the inputs' dtype (cast the float64 tables to the data's dtype, "
                          f"not the data to float32)")
    return yours


@dataclass(frozen=True)
class Mismatch:
    wrong: Tensor  # (N,) bool: the examples that differ
    max_abs: float  # largest |yours - library| over all elements
    max_rel: float  # largest, over examples, of max |yours - library| / max(max |yours|, max |library|)

    def summary(self, labels: Sequence[str]) -> str:
        first = labels[int(self.wrong.nonzero()[0])]
        return (f"{int(self.wrong.sum())} of {len(labels)} cases differ, max abs diff {self.max_abs:.2e}, max rel "
                f"diff {self.max_rel:.2e}; the first is {first}")


def mismatch(yours: Tensor, library: Tensor, labels: Sequence[str], rtol: float = RTOL, atol: float = ATOL) -> Mismatch:
    """Compare (N, ...) tensors example by example, relative to each example's scale; fail at once on NaN or inf."""
    yours, library = yours.detach().to(torch.float64), library.detach().to(torch.float64)
    finite = torch.isfinite(yours).reshape(len(yours), -1).all(1)
    if not finite.all():
        raise CheckFailed(f"your output has NaN or inf values, first at {labels[int((~finite).nonzero()[0])]} "
                          f"(the square root of a negative number, or a division by 1 - alpha_bar = 0?)")
    diff = (yours - library).abs().reshape(len(yours), -1).amax(1)
    scale = library.abs().reshape(len(yours), -1).amax(1)
    wrong = diff > rtol * scale + atol
    relative = diff / torch.maximum(scale, yours.abs().reshape(len(yours), -1).amax(1)).clamp(min=1e-300)
    return Mismatch(wrong=wrong, max_abs=diff.max().item(), max_rel=relative.max().item())


@dataclass(frozen=True)
class Term:
    """One term of a linear combination: the tensor the learner received and the paper's coefficient on it."""

    name: str  # the argument's name, e.g. "eps"
    values: Tensor  # (N, ...) float64, what the learner's function was given
    formula: str  # the paper's coefficient as text, e.g. "sqrt(1 - alpha_bar[t])"
    coef: Formula  # the paper's coefficient, (N,)
    mistakes: Sequence[tuple[str, Formula]] = ()  # known wrong coefficients, tried before the generic ones


def explain_linear(yours: Tensor, terms: Sequence[Term], q: SimpleNamespace, labels: Sequence[str], cite: str,
                   mutations: Sequence[Mutation] = (), within: Tensor | None = None) -> list[str]:
    """Regress yours (N, ...) on the terms, example by example, and describe every coefficient that is wrong.

    `within` (N,) bool: the examples whose output differs; a coefficient is only reported where it does.
    """
    n = len(yours)
    basis = torch.stack([term.values.detach().to(torch.float64).reshape(n, -1) for term in terms], dim=2)  # (N, D, K)
    target = yours.detach().to(torch.float64).reshape(n, -1, 1)
    fit = torch.linalg.lstsq(basis, target).solution  # (N, K, 1): one coefficient per term and example
    residual = (basis @ fit - target).norm(dim=(1, 2)) / target.norm(dim=(1, 2)).clamp(min=1e-300)
    if (residual > 1e-6).any():
        b = int((residual > 1e-6).nonzero()[0])
        names = " + ".join(f"{letter} * {term.name}" for letter, term in zip("abcdefgh", terms))
        return [f"your output is not of the form {names} for some numbers {', '.join('abcdefgh'[:len(terms)])}: at "
                f"{labels[b]} the best such fit leaves "
                f"{residual[b].item():.1%} of it unexplained (a product of two inputs, an input applied twice, or "
                f"a term that is not in {cite}?)"]
    lines = []
    for k, term in enumerate(terms):
        found, expected = fit[:, k, 0], term.coef(q)
        wrong = ~torch.isclose(found, expected, **MATCH) & (True if within is None else within)
        if not wrong.any():
            continue
        relative = (found - expected).abs() / expected.abs().clamp(min=1e-12)
        clear = wrong & (relative > 0.01)  # quote the first example where the difference shows in 4 digits
        b = int(clear.nonzero()[0]) if clear.any() else int(relative.argmax())
        swapped = [(f"the coefficient of {other.name}, {other.formula}: are the two swapped?", other.coef)
                   for other in terms if other is not term]
        line = (f"the coefficient of {term.name} is {number(found[b])} where {cite} has {term.formula} = "
                f"{number(expected[b])} at {labels[b]}")
        named = explain_value(found, wrong, term.formula, term.coef, q, [*term.mistakes, *swapped], mutations)
        lines.append(line + (f"; yours equals {named}" if named else ""))
    return lines


def explain_value(found: Tensor, wrong: Tensor, formula: str, coef: Formula, q: SimpleNamespace,
                  mistakes: Sequence[tuple[str, Formula]] = (), mutations: Sequence[Mutation] = ()) -> str | None:
    """Name the known mistake that `found` (N,) equals on most of the `wrong` examples, or None."""
    candidates = [*mistakes, *((f"{formula} {change}", _mutated(coef, mutate)) for change, mutate in mutations),
                  (f"-({formula}), the opposite sign", lambda q: -coef(q)),
                  ("0: the term is missing", lambda q: torch.zeros_like(coef(q)))]
    best, best_count = None, 0
    for description, candidate in candidates:
        try:
            value = candidate(q)
        except AttributeError:  # a mutation of a table this checker does not have
            continue
        count = int((torch.isclose(found, value, **MATCH) & wrong).sum())
        if count > best_count:
            best, best_count = description, count
    total = int(wrong.sum())
    if best is None or 2 * best_count < total:
        return None
    return best if best_count == total else f"{best} (in {best_count} of the {total} cases that differ)"


def number(value: Tensor | float) -> str:
    """A coefficient for a message: 4 significant digits, and 0 for round-off (1e-17 is a 0 that lost its way)."""
    value = float(value)
    return "0" if abs(value) < 1e-12 else f"{value:.4g}"


def _mutated(coef: Formula, mutate: Callable[[SimpleNamespace], SimpleNamespace]) -> Formula:
    return lambda q: coef(mutate(q))


def replace(q: SimpleNamespace, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(q), **changes})


def concat(tables: Sequence[SimpleNamespace]) -> SimpleNamespace:
    """Join the per-example tables of several calls: tensors are concatenated, nested tables joined, others kept."""
    out = {}
    for key, value in vars(tables[0]).items():
        if isinstance(value, Tensor):
            out[key] = torch.cat([vars(table)[key] for table in tables])
        elif isinstance(value, SimpleNamespace):
            out[key] = concat([vars(table)[key] for table in tables])
        else:
            out[key] = value
    return SimpleNamespace(**out)


# ------------------------------------------------------------------------------------ the flow of a linear checker


@dataclass(frozen=True)
class Call:
    """One call of the learner's function, with what the diagnosis needs to know about it."""

    args: dict[str, object]  # the learner's arguments, in order
    library: Tensor  # the library's output on them, (B, ...)
    q: SimpleNamespace  # per-example tables for the formulas, each (B,)
    labels: list[str]  # one per example, e.g. "t = 0 (linear schedule)"
    case: str  # the whole call, for messages


@dataclass(frozen=True)
class Coef:
    """The paper's coefficient on one term of a linear combination."""

    name: str  # the term as messages name it; also the argument that holds it, unless `values` is given
    formula: str  # the coefficient as text
    coef: Formula  # the coefficient, (B,)
    values: Callable[[dict], Tensor] | None = None  # the term computed from a call's arguments
    mistakes: Sequence[tuple[str, Formula]] = ()  # known wrong coefficients, tried first


def linear_lines(yours: Tensor, calls: Sequence[Call], coefs: Sequence[Coef], paper: str,
                 mutations: Sequence[Mutation], outputs: Callable[[dict], list] | None = None) -> list[str]:
    """[] if yours (N, ...) matches the calls' library outputs, else the mismatch summary and the diagnosis.

    `outputs(args)` lists whole wrong outputs [(description, tensor)] (a KL in the other direction), tried first.
    """
    labels = [label for c in calls for label in c.labels]
    found = mismatch(yours, torch.cat([c.library for c in calls]), labels)
    if not found.wrong.any():
        return []
    for k, (description, _) in enumerate(outputs(calls[0].args) if outputs else []):
        value = torch.cat([outputs(c.args)[k][1] for c in calls])
        if not (mismatch(yours, value, labels).wrong & found.wrong).any():
            return [found.summary(labels), f"your output equals {description}"]
    terms = [Term(c.name, torch.cat([c.values(call.args) if c.values else call.args[c.name] for call in calls]),
                  c.formula, c.coef, c.mistakes) for c in coefs]
    q = concat([c.q for c in calls])
    return [found.summary(labels), *explain_linear(yours, terms, q, labels, paper, mutations, found.wrong)]


def check_linear(check: str, fn: Callable, calls: Sequence[Call], coefs: Sequence[Coef], *, library: str, paper: str,
                 label: str, solution: str, mutations: Sequence[Mutation] = (),
                 outputs: Callable[[dict], list] | None = None) -> bool:
    """Call fn on every call's arguments, compare with the library and print the verdict; True if it matches."""

    def run() -> str:
        yours = [expect_like(fn, call(fn, c.args, case=c.case, solution=solution), c.library, c.case) for c in calls]
        lines = linear_lines(torch.cat(yours), calls, coefs, paper, mutations, outputs)
        if lines:
            raise CheckFailed(f"{name_of(fn)} does not match {library} ({paper}; {label}): " + "\n  - ".join(lines))
        diff = max((y - c.library).abs().max().item() for y, c in zip(yours, calls))
        return f"{name_of(fn)} matches {library} on {sum(len(c.labels) for c in calls)} cases (max abs diff {diff:.1e})"

    return report(check, run)


# ------------------------------------------------------------------------------------------ the shared inputs

T = 1000  # steps of both schedules the checkers use
IMAGE = (2, 3, 4)  # one example's shape: its last size differs from the batch of 6, so a (B,) table cannot broadcast


def solution(notebook: str) -> str:
    return f"solutions/{notebook}.py (in the course repository)"


def randn(g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def schedule_cases(g: torch.Generator) -> list[tuple[str, NoiseSchedule, Tensor]]:
    """(name, schedule, t) for the linear and cosine schedules; t: (6,) holds 0, 1, two random steps, T-2 and T-1."""
    cases = []
    for name in ("linear", "cosine"):
        middle = [int(torch.randint(2, T // 2, (), generator=g)), int(torch.randint(T // 2, T - 2, (), generator=g))]
        cases.append((name, NoiseSchedule.named(name, T), torch.tensor([0, 1, *middle, T - 2, T - 1])))
    return cases


def labels(name: str, t: Tensor, extra: str = "") -> list[str]:
    return [f"t = {int(step)} ({name} schedule{extra})" for step in t]


def describe(name: str, t: Tensor, x: Tensor) -> str:
    return f"the {name} schedule, t = {t.tolist()}, a batch of shape {tuple(x.shape)}"


def tables(schedule: NoiseSchedule, t: Tensor, variance: str | None = None) -> SimpleNamespace:
    """The schedule's tables at each example's t, (B,) float64, and the same at t - 1 (what table[t - 1] reads).

    With `variance` ("posterior" or "beta"), also DDPM's reverse variance sigma_t^2, the other choice, and t > 0.
    """

    def at(index: Tensor) -> SimpleNamespace:
        q = SimpleNamespace(alpha=schedule.alpha[index], alpha_bar=schedule.alpha_bar[index], beta=schedule.beta[index],
                            alpha_bar_prev=schedule.alpha_bar_prev[index], sqrt=torch.sqrt)
        if variance is not None:  # DDPM sec. 3.2; math/posterior.tex eq:reverse-variance-choices
            chosen, other = (schedule.posterior_variance, schedule.beta)[:: 1 if variance == "posterior" else -1]
            q.sigma2, q.other_sigma2, q.nonzero = chosen[index], other[index], (index > 0).to(torch.float64)
        return q

    q = at(t)
    q.at_t_minus_1 = at((t - 1) % schedule.T)  # Python's table[t - 1]: at t = 0 it reads the last entry
    return q


MUTATIONS: tuple[Mutation, ...] = (  # the usual slips in a formula over the schedule's tables
    ("without the square root", lambda q: replace(q, sqrt=lambda v: v)),
    ("with alpha[t] in place of alpha_bar[t]", lambda q: replace(q, alpha_bar=q.alpha)),
    ("with alpha_bar[t] in place of alpha[t]", lambda q: replace(q, alpha=q.alpha_bar)),
    ("with alpha_bar[t] in place of alpha_bar_prev[t]", lambda q: replace(q, alpha_bar_prev=q.alpha_bar)),
    ("with alpha_bar_prev[t] in place of alpha_bar[t]", lambda q: replace(q, alpha_bar=q.alpha_bar_prev)),
    ("with alpha_bar[t - 1] in place of alpha_bar_prev[t] (they differ at t = 0, where alpha_bar_prev[0] = 1 and "
     "alpha_bar[-1] is the last entry)", lambda q: replace(q, alpha_bar_prev=q.at_t_minus_1.alpha_bar)),
    ("with every table read at t - 1 (t off by one; at t = 0, table[t - 1] is the last entry)",
     lambda q: q.at_t_minus_1),
)
