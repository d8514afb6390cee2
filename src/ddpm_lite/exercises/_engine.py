"""The grading engine: how a checker compares a learner's function with the library's and says what is wrong.

A checker draws float64 inputs (`_inputs`), calls both functions and raises `_CheckFailed` with the message to print:

1. `_call` runs the learner's function on copies of the inputs: NotImplementedError becomes "not implemented yet",
   any other exception its type, message and the learner's line, with a hint for the usual causes (a (B,) table that
   does not broadcast, t past the end, math.sqrt on a tensor); changing an input in place is an error too.
2. `_expect_like` checks the type, shape and dtype of the result against the library's.
3. `_mismatch` finds the examples (first dimension) whose largest difference exceeds _RTOL times the example's scale
   (its largest value in the library's output) plus _ATOL, and summarises the differences.
4. `_explain_linear`, for a formula that combines known terms (`_Term`: q_sample's x_0 and eps), regresses the
   learner's output on them by least squares, example by example; `_wrong_line` reports each fitted coefficient that
   differs from the paper's and the known mistake it equals: the term's own list, another term's coefficient
   (swapped), a mutation (no square root, alpha_t for alpha_bar_t, t off by one, ...), its opposite, or 0 (missing).

Formulas are functions of a namespace `q` of per-example (N,) float64 tables and `q.sqrt`, so that a mutation can
replace a table or the square root and evaluate the same formula again. `_check_linear` runs the whole flow.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor

# Per example: max |yours - library| <= _RTOL * max |library| + _ATOL. The inputs are float64, but a table read in
# float32 (as notebook 04's `.float()` does) loses up to 6e-4 of 1 - alpha_bar near t = 0 (float32's relative
# precision, 6e-8, over beta[0] = 1e-4); every formula slip the checkers know is off by more than a hundredth of the
# value at some t, so the tolerance sits between the two.
_RTOL, _ATOL = 1e-3, 1e-8
_MATCH = dict(rtol=1e-3, atol=1e-9)  # a fitted coefficient "equals" the paper's value or a known mistake
_Formula = Callable[[SimpleNamespace], Tensor]  # q -> (N,) float64, one value per example
_Mutation = tuple[str, Callable[[SimpleNamespace], SimpleNamespace]]  # (what it changes, q -> changed q)
_Mistake = tuple[str, _Formula]  # (what it is, the wrong coefficient)

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


class _CheckFailed(Exception):
    """Raised inside a checker with the message to print; `_report` prints it and returns False."""


def _report(check: str, run: Callable[[], str]) -> bool:
    """Run a checker's body: print `check: <success line>` and return True, or `check: <why not>` and return False."""
    try:
        message = run()
    except _CheckFailed as failure:
        print(f"{check}: {failure}")
        return False
    print(f"{check}: {message}")
    return True


def _fail_with(lines: Sequence[str], opening: str) -> None:
    """Raise `_CheckFailed` with the opening and one "  - " line per finding, unless there are none."""
    if lines:
        raise _CheckFailed(opening + "\n  - ".join(lines))


def _name_of(fn: Callable) -> str:
    return getattr(fn, "__name__", None) or repr(fn)


def _call(fn: Callable, args: dict[str, object], *, case: str, solution: str):
    """fn(*args.values()) on copies of the tensor arguments; every way it can go wrong becomes a _CheckFailed."""
    copies = {key: value.clone() if isinstance(value, Tensor) else value for key, value in args.items()}
    try:
        out = fn(*copies.values())
    except NotImplementedError:
        raise _CheckFailed(f"{_name_of(fn)} is not implemented yet; the solution is in {solution}") from None
    except Exception as error:  # the learner's bug, whatever it is, becomes a message
        raise _CheckFailed(_describe_error(fn, error, case, list(args))) from None
    for key, value in args.items():
        if isinstance(value, Tensor) and not torch.equal(value, copies[key]):
            raise _CheckFailed(f"{_name_of(fn)} changed its argument {key} in place on {case}; return a new tensor "
                               f"instead (x = x + ..., not x += ...)")
    return out


def _describe_error(fn: Callable, error: Exception, case: str, names: list[str]) -> str:
    message = f"{_name_of(fn)} raised {type(error).__name__}: {error} on {case}"
    if isinstance(error, TypeError) and "argument" in str(error):
        message += f"\n  hint: the checker calls {_name_of(fn)}({', '.join(names)})"
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)[1:]  # [0] is `_call` itself
              if f"{os.sep}torch{os.sep}" not in frame.filename]
    if frames:
        line = (frames[-1].line or "").strip()
        message += f"\n  at line {frames[-1].lineno} of {frames[-1].name}" + (f": {line}" if line else "")
    hints = [hint for fragment, hint in _HINTS if fragment in str(error)]
    return message + (f"\n  hint: {hints[0]}" if hints else "")


def _shape_of(value: object) -> str:
    """A returned value for a message: "shape (6, 2)" for a tensor, "a float" for anything else."""
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else f"a {type(value).__name__}"


def _expect_like(fn: Callable, yours: object, library: Tensor, case: str, hint: str = "") -> Tensor:
    """Fail unless `yours` is a tensor of the library's shape and dtype; return it."""
    if not isinstance(yours, Tensor) or yours.shape != library.shape:
        wanted = "the library returns" if isinstance(yours, Tensor) else "expected a tensor of shape"
        raise _CheckFailed(f"{_name_of(fn)} returned {_shape_of(yours)} on {case}; {wanted} "
                           f"{tuple(library.shape)}{hint}")
    if yours.dtype != library.dtype:
        raise _CheckFailed(f"{_name_of(fn)} returned {yours.dtype} on {case} where the library returns "
                           f"{library.dtype}: keep the inputs' dtype (cast the float64 tables to the data's dtype, "
                           f"not the data to float32)")
    return yours


def _expect_one_number(fn: Callable, loss: object, case: str, what: str) -> None:
    """Fail unless a loss checker's `fn` returned a one-element tensor; `what` says which number it should be."""
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise _CheckFailed(f"{_name_of(fn)} returned {_shape_of(loss)} on {case}; {what}")


def _first_input(fn: Callable, model: object, who: str, case: str) -> tuple[Tensor, Tensor]:
    """The (x, time) that `fn` first gave the recording stand-in `model`; fail if it never called it."""
    if not model.inputs:
        raise _CheckFailed(f"{_name_of(fn)} never called {who} on {case}")
    return model.inputs[0]


def _expect_loss(fn: Callable, loss: Tensor, library: Tensor, mistakes: Sequence[tuple[str, Tensor]], *, case: str,
                 loss_name: str, given: str) -> None:
    """Fail unless a loss computed from the right inputs equals the library's (rtol 1e-6), naming the first of
    `mistakes` (what it would be, its value) that it equals instead."""
    loss = loss.detach().to(torch.float64).reshape(())
    if torch.isclose(loss, library, rtol=1e-6, atol=1e-12):
        return
    named = [text for text, value in mistakes if torch.isclose(loss, value, rtol=1e-6, atol=1e-12)]
    raise _CheckFailed(f"{_name_of(fn)} returned {loss.item():.6g} where {loss_name} is {library.item():.6g} on "
                       f"{case}; {given}, so the loss itself is wrong" + (f": yours is {named[0]}" if named else ""))


@dataclass(frozen=True)
class _Mismatch:
    wrong: Tensor  # (N,) bool: the examples that differ
    max_abs: float  # largest |yours - library| over all elements
    max_rel: float  # largest, over examples, of max |yours - library| / max(max |yours|, max |library|)

    def summary(self, labels: Sequence[str]) -> str:
        first = labels[int(self.wrong.nonzero()[0])]
        return (f"{int(self.wrong.sum())} of {len(labels)} cases differ, max abs diff {self.max_abs:.2e}, max rel "
                f"diff {self.max_rel:.2e}; the first is {first}")


def _mismatch(yours: Tensor, library: Tensor, labels: Sequence[str], rtol: float = _RTOL,
              atol: float = _ATOL) -> _Mismatch:
    """Compare (N, ...) tensors example by example, relative to each example's scale; fail at once on NaN or inf."""
    yours, library = yours.detach().to(torch.float64), library.detach().to(torch.float64)
    finite = torch.isfinite(yours).reshape(len(yours), -1).all(1)
    if not finite.all():
        raise _CheckFailed(f"your output has NaN or inf values, first at {labels[int((~finite).nonzero()[0])]} "
                           f"(the square root of a negative number, or a division by 1 - alpha_bar = 0?)")
    diff = (yours - library).abs().reshape(len(yours), -1).amax(1)
    scale = library.abs().reshape(len(yours), -1).amax(1)
    wrong = diff > rtol * scale + atol
    relative = diff / torch.maximum(scale, yours.abs().reshape(len(yours), -1).amax(1)).clamp(min=1e-300)
    return _Mismatch(wrong=wrong, max_abs=diff.max().item(), max_rel=relative.max().item())


@dataclass(frozen=True)
class _Term:
    """A known term of a formula: the paper's coefficient on it, as text and as a formula, and its known mistakes."""

    name: str  # the term as messages name it; also the argument that holds it, unless `values` is given
    formula: str  # the paper's coefficient as text, e.g. "sqrt(1 - alpha_bar[t])"
    coef: _Formula  # the paper's coefficient, (N,)
    values: Callable[[dict], Tensor] | None = None  # the term computed from a call's arguments, e.g. var1 / var2
    mistakes: Sequence[_Mistake] = ()  # known wrong coefficients, tried before the generic ones

    def of(self, args: dict) -> Tensor:
        """The term in one call, (B, ...): what the learner's function was given, or computed from it."""
        return self.values(args) if self.values else args[self.name]


def _explain_linear(yours: Tensor, terms: Sequence[_Term], values: Sequence[Tensor], q: SimpleNamespace,
                    labels: Sequence[str], paper: str, mutations: Sequence[_Mutation], within: Tensor) -> list[str]:
    """Regress yours (N, ...) on the terms' values (each (N, ...)), example by example, and describe every wrong
    coefficient. `within` (N,) bool: the examples whose output differs; a coefficient is only reported where it does.
    """
    n = len(yours)
    basis = torch.stack([value.detach().to(torch.float64).reshape(n, -1) for value in values], dim=2)  # (N, D, K)
    target = yours.detach().to(torch.float64).reshape(n, -1, 1)
    fit = torch.linalg.lstsq(basis, target).solution  # (N, K, 1): one coefficient per term and example
    residual = (basis @ fit - target).norm(dim=(1, 2)) / target.norm(dim=(1, 2)).clamp(min=1e-300)
    if (residual > 1e-6).any():
        b = int((residual > 1e-6).nonzero()[0])
        names = " + ".join(f"{letter} * {term.name}" for letter, term in zip("abcdefgh", terms))
        return [f"your output is not of the form {names} for some numbers {', '.join('abcdefgh'[:len(terms)])}: at "
                f"{labels[b]} the best such fit leaves "
                f"{100 * residual[b].item():.1f}% of it unexplained (a product of two inputs, an input applied twice, "
                f"or a term that is not in {paper}?)"]
    lines = []
    for k, term in enumerate(terms):
        found, expected = fit[:, k, 0], term.coef(q)
        wrong = ~torch.isclose(found, expected, **_MATCH) & within
        if not wrong.any():
            continue
        relative = (found - expected).abs() / expected.abs().clamp(min=1e-12)
        clear = wrong & (relative > 0.01)  # quote the first example where the difference shows in 4 digits
        b = int(clear.nonzero()[0]) if clear.any() else int(relative.argmax())
        swapped = [(f"the coefficient of {other.name}, {other.formula}: are the two swapped?", other.coef)
                   for other in terms if other is not term]
        lines.append(_wrong_line(f"the coefficient of {term.name}", found, b, term, q, labels, paper, wrong,
                                 mutations, swapped))
    return lines


def _wrong_line(what: str, found: Tensor, b: int, term: _Term, q: SimpleNamespace, labels: Sequence[str],
                paper: str, wrong: Tensor, mutations: Sequence[_Mutation], also: Sequence[_Mistake] = ()) -> str:
    """"<what> is found[b] where <paper> has <formula> = ... at <labels[b]>", and the known mistake that `found` (N,)
    equals on most `wrong` examples: the term's own, `also`, the formula under each mutation, its opposite, or 0."""
    line = (f"{what} is {_number(found[b])} where {paper} has {term.formula} = {_number(term.coef(q)[b])} at "
            f"{labels[b]}")
    candidates = [*term.mistakes, *also,
                  *((f"{term.formula} {change}", _mutated(term.coef, mutate)) for change, mutate in mutations),
                  (f"-({term.formula}), the opposite sign", lambda q: -term.coef(q)),
                  ("0: the term is missing", lambda q: torch.zeros_like(term.coef(q)))]
    best, best_count = None, 0
    for description, candidate in candidates:
        try:
            value = candidate(q)
        except AttributeError:  # a mutation of a table this checker does not have
            continue
        count = int((torch.isclose(found, value, **_MATCH) & wrong).sum())
        if count > best_count:
            best, best_count = description, count
    total = int(wrong.sum())
    if best is None or 2 * best_count < total:
        return line
    return f"{line}; yours equals " + (best if best_count == total else
                                       f"{best} (in {best_count} of the {total} cases that differ)")


def _number(value: Tensor | float) -> str:
    """A coefficient for a message: 4 significant digits, and 0 for round-off (1e-17 is a 0 that lost its way)."""
    value = float(value)
    return "0" if abs(value) < 1e-12 else f"{value:.4g}"


def _mutated(coef: _Formula, mutate: Callable[[SimpleNamespace], SimpleNamespace]) -> _Formula:
    return lambda q: coef(mutate(q))


def _concat(tables: Sequence[SimpleNamespace]) -> SimpleNamespace:
    """Join the per-example tables of several calls: tensors are concatenated, nested tables joined, others kept."""
    out = {}
    for key, value in vars(tables[0]).items():
        if isinstance(value, Tensor):
            out[key] = torch.cat([vars(table)[key] for table in tables])
        elif isinstance(value, SimpleNamespace):
            out[key] = _concat([vars(table)[key] for table in tables])
        else:
            out[key] = value
    return SimpleNamespace(**out)


# ------------------------------------------------------------------------------------ the flow of a linear checker


@dataclass(frozen=True)
class _Call:
    """One call of the learner's function, with what the diagnosis needs to know about it."""

    args: dict[str, object]  # the learner's arguments, in order
    library: Tensor  # the library's output on them, (B, ...)
    q: SimpleNamespace  # per-example tables for the formulas, each (B,)
    labels: list[str]  # one per example, e.g. "t = 0 (linear schedule)"
    case: str  # the whole call, for messages


def _linear_lines(yours: Tensor, calls: Sequence[_Call], terms: Sequence[_Term], paper: str,
                  mutations: Sequence[_Mutation], outputs: Callable[[dict], list] | None = None) -> list[str]:
    """[] if yours (N, ...) matches the calls' library outputs, else the mismatch summary and the diagnosis.

    `outputs(args)` lists whole wrong outputs [(description, tensor)] (a KL in the other direction), tried first.
    """
    labels = [label for call in calls for label in call.labels]
    found = _mismatch(yours, torch.cat([call.library for call in calls]), labels)
    if not found.wrong.any():
        return []
    for k, (description, _) in enumerate(outputs(calls[0].args) if outputs else []):
        value = torch.cat([outputs(call.args)[k][1] for call in calls])
        if not (_mismatch(yours, value, labels).wrong & found.wrong).any():
            return [found.summary(labels), f"your output equals {description}"]
    values = [torch.cat([term.of(call.args) for call in calls]) for term in terms]
    q = _concat([call.q for call in calls])
    return [found.summary(labels), *_explain_linear(yours, terms, values, q, labels, paper, mutations, found.wrong)]


def _check_linear(check: str, fn: Callable, calls: Sequence[_Call], terms: Sequence[_Term], *, library: str,
                  paper: str, label: str, solution: str, mutations: Sequence[_Mutation] = (),
                  outputs: Callable[[dict], list] | None = None) -> bool:
    """Call fn on every call's arguments, compare with the library and print the verdict; True if it matches."""

    def run() -> str:
        yours = [_expect_like(fn, _call(fn, call.args, case=call.case, solution=solution), call.library, call.case)
                 for call in calls]
        _fail_with(_linear_lines(torch.cat(yours), calls, terms, paper, mutations, outputs),
                   f"{_name_of(fn)} does not match {library} ({paper}; {label}): ")
        diff = max((output - call.library).abs().max().item() for output, call in zip(yours, calls))
        return (f"{_name_of(fn)} matches {library} on {sum(len(call.labels) for call in calls)} cases "
                f"(max abs diff {diff:.1e})")

    return _report(check, run)
