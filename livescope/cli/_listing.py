"""`livescope models list`: the model versions of the repositories (no server needed) or of a
running server, as one schema (`ModelListing`, printed by --json) and as tables that stay
readable in an 80-column terminal.

Imported only by that command: pydantic and the repository stay out of `livescope --help`.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from livescope.modelcard import Comparison
from livescope.repository import ModelRepository, ModelVersion
from livescope.repository import log as repository_log

SHOWN_METRICS = 3  # per version in the table; --json has them all
DATA_CHARS = 160  # a training data description is cut here in the table; --json has it whole


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ComparisonEntry(_Frozen):
    """The version active when this one was trained, scored on this one's held-out data."""

    against: str = Field(description="name@version active at training time")
    metric: str
    higher_is_better: bool
    new_value: float
    active_value: float
    not_worse: bool


class Lineage(_Frozen):
    data: str = Field(description="what the training data was")
    session_ids: tuple[str, ...] = Field(default=(), description="calibration sessions it was trained on")
    command: str = Field(description="the command that trained it")
    trained_at: datetime | None = None
    comparison: ComparisonEntry | None = None


class VersionEntry(_Frozen):
    ref: str = Field(description="name@version")
    name: str
    version: int
    task: str
    folder: str
    metrics: dict[str, float] = Field(description="held-out metrics; each name says its unit")
    deciding_metrics: tuple[str, ...] = Field(
        default=(), description="those of the metrics the deploy gate compares versions on")
    lineage: Lineage
    served: bool = Field(description="repository: the version a server on these repositories serves "
                                     "(the newest that passed the quality gate); server: the active version")
    loaded_on: str | None = Field(default=None, description="server: the execution provider it is loaded "
                                                           "on; None: not loaded (or a repository listing)")
    candidate: bool = Field(default=False, description="it failed the quality gate: served only when "
                                                       "activated with --force")
    gate: str | None = Field(default=None, description="the quality gate's verdict, one line; None: the "
                                                       "version was written before the gate existed")


class ModelListing(_Frozen):
    source: Literal["repository", "server"]
    repositories: tuple[str, ...] = Field(default=(), description="folders read, in search order")
    server: str | None = Field(default=None, description="the server's frames address")
    models: tuple[VersionEntry, ...]
    served: dict[str, str] = Field(description="name -> the name@version served")
    problems: tuple[str, ...] = Field(default=(), description="versions that cannot be served, and why")


# -- building ----------------------------------------------------------------------------------


def repository_listing(roots: list[Path]) -> ModelListing:
    """Every version in ``roots`` (searched in order, as the server does); the served one of each
    name is the one `ModelRepository.resolve` picks when nothing was activated: the newest."""
    repository_log.disabled = True  # it logs each problem for a server's log; the listing has them
    try:
        repository = ModelRepository(roots)
    finally:
        repository_log.disabled = False
    served = {name: default.ref for name in repository.names() if (default := repository.default(name))}
    entries = tuple(_from_version(v, served=served.get(name) == v.ref)
                    for name in repository.names() for v in repository.versions(name))
    return ModelListing(source="repository", repositories=tuple(str(r) for r in repository.roots),
                        models=entries, served=served, problems=tuple(repository.problems))


def server_listing(address: str, reply: dict[str, Any]) -> ModelListing:
    """A server's ``list_models`` reply."""
    entries = tuple(_from_reply(m) for m in reply["models"])
    return ModelListing(source="server", server=address, models=entries,
                        served={e.name: e.ref for e in entries if e.served}, problems=tuple(reply["problems"]))


def _from_version(v: ModelVersion, *, served: bool) -> VersionEntry:
    card, comparison = v.card, v.card.comparison
    lineage = Lineage(data=card.provenance.data, session_ids=card.provenance.session_ids,
                      command=card.provenance.command, trained_at=card.provenance.trained_at,
                      comparison=None if comparison is None else _comparison(comparison))
    return VersionEntry(ref=card.ref, name=card.name, version=card.version, task=card.task, folder=str(v.folder),
                        metrics=card.metrics, deciding_metrics=_deciding(card.task, card.metrics),
                        lineage=lineage, served=served, candidate=not card.serves_by_default,
                        gate=card.gate.reason if card.gate else None)


def _from_reply(m: dict[str, Any]) -> VersionEntry:
    comparison, gate = m.get("comparison"), m.get("gate")
    lineage = Lineage(data=m.get("data") or "", session_ids=tuple(m.get("session_ids") or ()),
                      command=m.get("trained_by") or "",
                      comparison=None if comparison is None else _comparison(Comparison.model_validate(comparison)))
    return VersionEntry(ref=f"{m['name']}@{m['version']}", name=m["name"], version=m["version"], task=m["task"],
                        folder=m.get("folder") or "", metrics=m["metrics"],
                        deciding_metrics=_deciding(m["task"], m["metrics"]), lineage=lineage,
                        served=m["active"], loaded_on=m["provider"] if m["loaded"] else None,
                        candidate=bool(gate) and not gate.get("passed", True),
                        gate=gate.get("reason") if gate else None)


def _comparison(c: Comparison) -> ComparisonEntry:
    return ComparisonEntry(against=c.against, metric=c.metric, higher_is_better=c.higher_is_better,
                           new_value=c.new_value, active_value=c.active_value, not_worse=c.not_worse)


def _deciding(task: str, metrics: dict[str, float]) -> tuple[str, ...]:
    from livescope.models.compare import DECIDING_METRICS

    return tuple(name for name, _ in DECIDING_METRICS.get(task, ()) if name in metrics)


# -- printing ----------------------------------------------------------------------------------


def print_listing(listing: ModelListing, console: Console) -> None:
    """Two tables, versions and their lineage; long values wrap or fold within their column."""
    console.print(_versions_table(listing))
    console.print(_lineage_table(listing))


def _versions_table(listing: ModelListing) -> Table:
    in_server = listing.source == "server"
    where = listing.server if in_server else ", ".join(listing.repositories)
    table = Table(title=f"models ({'server ' if in_server else ''}{where})", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left",
                  caption=f"*: a deciding metric (the deploy gate's); at most {SHOWN_METRICS} shown, all with --json")
    table.add_column("model", no_wrap=True)
    table.add_column("task", overflow="fold")
    table.add_column("state" if in_server else "served", overflow="fold")
    table.add_column("held-out metrics", overflow="fold", ratio=1)
    for e in listing.models:
        served = "yes" if e.served else "candidate" if e.candidate else ""
        table.add_row(e.ref, e.task, _state(e) if in_server else served, _metrics_cell(e))
    return table


def _state(e: VersionEntry) -> str:
    """A server's version: active (its stage runs it) and/or loaded, on which provider."""
    return "\n".join([*(["active"] if e.served else []), *(["candidate"] if e.candidate else []),
                      *([f"on {e.loaded_on}"] if e.loaded_on else [])])


def _metrics_cell(e: VersionEntry) -> Text:
    """One metric a line (a long name wraps before its value), the deciding ones first."""
    names = [*e.deciding_metrics, *(n for n in e.metrics if n not in e.deciding_metrics)]
    lines = [f"{'*' if n in e.deciding_metrics else ''}{n} {e.metrics[n]:.4g}" for n in names[:SHOWN_METRICS]]
    if len(names) > SHOWN_METRICS:
        lines.append(f"(+{len(names) - SHOWN_METRICS} more)")
    return Text("\n".join(lines) or "-")


def _lineage_table(listing: ModelListing) -> Table:
    table = Table(title="lineage", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("model", no_wrap=True)
    table.add_column("trained on, by, against the version active then", ratio=1)
    for e in listing.models:
        table.add_row(e.ref, _lineage_cell(e.lineage, e.gate))
    return table


def _lineage_cell(lineage: Lineage, gate: str | None) -> Table | Text:
    rows = []
    if lineage.session_ids:
        rows.append(("sessions", ", ".join(lineage.session_ids)))
    if lineage.data:
        rows.append(("data", _shorten(lineage.data, DATA_CHARS)))
    if lineage.command:
        rows.append(("command", lineage.command))
    c = lineage.comparison
    if c is not None:
        verdict = "not worse" if c.not_worse else "worse"
        rows.append(("against", f"{c.against}: {c.metric} {c.new_value:.4g} vs {c.active_value:.4g} ({verdict})"))
    if gate is not None:
        rows.append(("gate", gate))
    if not rows:
        return Text("-")
    grid = Table.grid(padding=(0, 1))
    grid.add_column(no_wrap=True, style="dim")
    grid.add_column(overflow="fold")
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
