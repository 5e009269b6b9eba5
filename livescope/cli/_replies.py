"""What the `models` and `status` commands read from a server's control replies: the fields each
command prints, validated where the reply enters (`_common.control(reply=...)`), so a reply
without them is a one-line error rather than a traceback. Extra fields are ignored (a newer
server may send more).

Imported only by the commands that send a request: pydantic stays out of `livescope --help`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from livescope.modelcard import Comparison


class _Reply(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Health(_Reply):
    status: str
    providers: tuple[str, ...]
    models_loaded: tuple[str, ...]


class Stats(_Reply):
    frames: int
    results: int
    errors: int
    busy: int = 0  # refused 'busy' (a client beyond its share); 0 from servers that do not count it
    dropped: int
    duplicates: int
    out_of_domain: int = 0  # frames whose results carry warnings (unlike the models' training data)
    undelivered_replies: int = 0  # answers a client did not take (not reading, or gone)
    undelivered_publications: int = 0  # results a subscriber was too slow for
    queue_depth: int
    streams: int
    uptime_s: float


class Activated(_Reply):
    active: str
    previous: str | None


class Loaded(_Reply):
    model: str
    provider: str
    load_s: float


class Unloaded(_Reply):
    unloaded: str


class Rescanned(_Reply):
    models: dict[str, tuple[int, ...]]
    problems: tuple[str, ...]


class ListedVersion(_Reply):
    """One entry of a ``list_models`` reply: what `models list` shows of it."""

    name: str
    version: int
    task: str
    active: bool
    loaded: bool
    provider: str | None  # the execution provider when loaded
    metrics: dict[str, float]
    trained_by: str | None = None
    data: str | None = None
    session_ids: tuple[str, ...] | None = None
    comparison: Comparison | None = None
    folder: str | None = None


class ModelList(_Reply):
    models: tuple[ListedVersion, ...]
    problems: tuple[str, ...]


class Adapting(_Reply):
    """A live adaptation's status (the `adapt` and `adapt_status` commands)."""

    task: str
    stream: str
    state: str
    frames_wanted: int
    frames_collected: int
    minutes: float
    elapsed_s: float
    fine_tune_from: str | None = None
    data: str | None = None
    model: str | None = None
    reason: str = ""
