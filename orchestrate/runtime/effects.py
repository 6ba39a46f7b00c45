"""The effect runner: what a run's transitions ask for, carried out in order.

`core.transitions` decides (a record, and a list of effects: Save, Kill,
Track, Event, WriteSignal, ...); this is the one place that does them, and
so the one writer of status records. It needs only the state folder's
layout, the engine's caches (what it writes it remembers, so the pass does
not read it back), the executor of a run, the clock and a way to say when
the engine must wake; it knows nothing of passes, selections or launching.
"""
from __future__ import annotations

from typing import Callable

from ..core import transitions as t
from ..core.fallback import limit_key
from ..core.records import ACTIVE
from ..core.spec import Agent
from .executors import Executor
from .faults import crash_point
from .state import (
    FileCache,
    Layout,
    StatusRecord,
    append_event,
    event,
    write_atomic,
    write_json,
    write_status,
)
from .wrapper import remove_run_files


class EffectRunner:
    """Does what `transitions` says, in order (`run`), and decides and does
    in one call for a run's observed fact (`apply`)."""

    def __init__(self, layout: Layout, status_cache: FileCache[StatusRecord],
                 signal_cache: FileCache[str],
                 executor_of: Callable[[StatusRecord], Executor],
                 clock: Callable[[], float], wake: Callable[[float], None],
                 attempt_ended: Callable[[Agent, StatusRecord, StatusRecord, object], None]
                 | None = None):
        """`executor_of`: the executor holding a record's run; `wake(at)`:
        the engine must run a pass by `at` (a kill due, a retry);
        `attempt_ended(agent, running, settled, verdict)`: told when a run's
        attempt ends, before the record that says so is written (telemetry)."""
        self.layout = layout
        self.status_cache = status_cache
        self.signal_cache = signal_cache
        self.executor_of = executor_of
        self.clock = clock
        self.wake = wake
        self.attempt_ended = attempt_ended

    def apply(self, agent: Agent, record: StatusRecord, fact: t.Observation,
              events: list[dict] | None = None) -> StatusRecord:
        """Decide (`transitions.transition`) and do what it says, in order.
        An effect that answers with a fact (`Track`) has the rest of the
        decision made again from that fact. Events go to `events` when given
        (a batch written by the caller), else to events.jsonl at once."""
        settled, effects = t.transition(record, agent, fact, self.clock())
        if (self.attempt_ended is not None and record.state in ACTIVE
                and settled.state not in ACTIVE and not isinstance(fact, t.NeverStarted)):
            self.attempt_ended(agent, record, settled, getattr(fact, "verdict", None))
        return self.run(settled, effects, events, agent)

    def run(self, record: StatusRecord | None, effects: t.Effects,
            events: list[dict] | None = None, agent: Agent | None = None
            ) -> StatusRecord | None:
        """Do what a transition, or one of the pure constructors of
        `transitions` (a launch, a cancel before start, a retry asked for, a
        retired instance, a fan-out row, a forget), says, in order. Nothing
        else writes a status record. An effect that answers with a fact
        (`Track`) has the rest of the decision made again from that fact (by
        `agent`'s transition). `record` is None only for a forget of an agent
        without one."""
        for effect in effects:
            answer = self._do(record, effect, events)
            if answer is not None:
                if agent is None:
                    raise TypeError(f"{effect!r} answers a run's transition only")
                return self.apply(agent, record, answer, events)
        return record

    def save(self, record: StatusRecord, durable: bool = True) -> None:
        write_status(self.layout, record, durable)
        self.status_cache.remember(self.layout.status(record.pipeline, record.agent), record)

    def _do(self, record: StatusRecord, effect: t.Effect,
            events: list[dict] | None) -> t.Observation | None:
        layout = self.layout
        if isinstance(effect, t.Save):
            self.save(record, effect.durable)
        elif isinstance(effect, t.Kill):
            self.executor_of(record).stop([record], effect.signal)
        elif isinstance(effect, t.Track):
            tracked = self.executor_of(record).track(record)
            return t.NotOurs() if tracked is None else t.Tracked(effect.kind, effect.reason,
                                                                 tracked)
        elif isinstance(effect, t.Event):
            if events is None:
                append_event(layout, effect.kind, **effect.details)
            else:
                events.append(event(effect.kind, **effect.details))
        elif isinstance(effect, t.WriteSignal):
            write_atomic(layout.signal(record.pipeline, record.agent), effect.text)
        elif isinstance(effect, t.RememberSignal):
            self.signal_cache.remember(layout.signal(record.pipeline, record.agent),
                                       effect.digest)
        elif isinstance(effect, t.WriteResult):
            path = layout.result(record.pipeline, record.agent)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, effect.text, durable=False)
        elif isinstance(effect, t.WriteFeedback):
            path = layout.feedback(record.pipeline, record.agent)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, effect.text)
        elif isinstance(effect, t.HoldPreset):
            directory = layout.ratelimits_dir
            directory.mkdir(exist_ok=True)
            write_json(directory / f"{limit_key(effect.preset, effect.model)}.json",
                       {"until": effect.until, "by": effect.by,
                        "reset_known": effect.reset_known})
        elif isinstance(effect, t.RemoveRunFiles):
            remove_run_files(layout, effect.run_id)
        elif isinstance(effect, t.Crash):
            crash_point(effect.point)
        elif isinstance(effect, t.Wake):
            self.wake(effect.at)
        elif isinstance(effect, t.Forget):
            path = layout.status(effect.pipeline, effect.agent)
            path.unlink(missing_ok=True)
            self.status_cache.forget(path)
        else:
            raise TypeError(f"not an effect: {effect!r}")
        return None
