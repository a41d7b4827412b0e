"""The chaos run: generated traffic through ``ctrguard run`` while everything around it fails,
compared with a clean run of the same input (``make chaos``; a short form runs in
``make test``: tests/test_chaos.py).

What it does (full form, ``python -m tests.chaos``):

1. Starts its own services: an S3 object store and a tansu broker on it (so the broker can
   be stopped and started without losing its topics), a ``redis-server``, two Slack API
   emulators.
2. Makes one day of traffic (2 partitions per input topic, a click outage that is a real
   incident), one impression dated 10 minutes before the wall clock (a year ahead of the
   stream) and 10,000 hostile messages: malformed, oversize, control characters, internal
   and bot traffic, duplicates, very late events, and the two poison shapes of issue 15 (an
   event nested 1,000 deep, an event of 1,040,000 bytes; ``--no-poison`` leaves them out).
3. Clean run: all of it produced first, then ``ctrguard run --drain``.
4. Chaos run: the same messages produced at ``--speed`` x real time (1,200: a day in 72 s)
   while ``ctrguard run``
   tails the topics; meanwhile the flow is stopped (SIGSTOP) for 15 s and for 60 s, Redis is
   stopped for 30 s, the broker is stopped and started gracefully, and the flow is killed
   with -9 five times (restarted from its recovery directory each time; the last restart
   drains the topics to their end).
5. Compares every figure, alert, quarantine flag, dead letter and Slack message with the
   clean run's (at-least-once repeats must be identical) and checks the conservation line
   of each run (per partition: consumed = counted + excluded + duplicates + dead-lettered),
   then prints a one-screen summary. Exit code 0 when everything held, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

from ctrguard.config import load_config_text
from devtools.services import (
    ensure_topics,
    start_broker,
    start_object_store,
    start_redis,
)
from devtools.slack_emulator import SlackEmulator
from tests.live_traffic import T0_MS, PacedProducer, Scheduled, traffic
from tests.slack_fixtures import TOKEN as SLACK_TOKEN
from tests.test_reliability_support import (
    Outcome,
    collect,
    config_yaml,
    expire_slack_lease,
    init_recovery,
    output_topics,
    start_run,
)

MIN_MS = 60_000


@dataclass(frozen=True)
class Plan:
    """What the chaos run injects. ``FULL`` is the issue's; ``SHORT`` runs in CI."""

    minutes: int = 1440
    #: Event-time seconds per wall-clock second. High on purpose: tansu on S3 storage (what
    #: lets the broker restart keep its topics) slowed to a crawl after a few thousand small
    #: produce requests per partition at 240x (see the README's "Chaos run").
    speed: float = 1200.0
    pauses_s: tuple[float, ...] = (15.0, 60.0)
    redis_stop_s: float = 30.0
    broker_restart: bool = True
    kills: int = 5                  # the last one ends the tailing run (then --drain)
    hostile: int = 10_000
    poison: bool = True
    seed: int = 7


FULL = Plan()
SHORT = Plan(minutes=180, speed=600.0, pauses_s=(2.0, 4.0), redis_stop_s=3.0, kills=2,
             hostile=400)


# ------------------------------------------------------------------------- traffic


def _hostile_value(kind: str, i: int, rng: random.Random, originals: list[Scheduled],
                   at_ms: int) -> tuple[bytes, Scheduled | None]:
    """One hostile message of ``kind`` (and the message it repeats, for duplicates)."""
    ts = at_ms
    good = {"event_id": f"h{i}", "ts": ts, "campaign_id": "big", "device": "mobile"}
    if kind == "not_json":
        return b"{not json " + str(i).encode(), None
    if kind == "binary":
        return b"\xff\xfe" + rng.randbytes(30), None
    if kind == "empty":
        return rng.choice([b"", b" ", b"null", b"[]", b"{}", b'"x"', b"1e999"]), None
    if kind == "wrong_type":
        return orjson.dumps({**good, "event_id": i}), None
    if kind == "missing_field":
        return orjson.dumps({"event_id": f"h{i}", "ts": ts}), None
    if kind == "ts_range":
        return orjson.dumps({**good, "ts": rng.choice([0, 1, -5, 2**62, 4_200_000_000_000])}), None
    if kind == "control_char":
        return orjson.dumps({**good, "campaign_id": rng.choice(
            ["c\x00x", "big\n", "b\u202eig", "\x1b[31mbig", "big\u2028"])}), None
    if kind == "long_id":
        return orjson.dumps({**good, "event_id": "e" * 5000}), None
    if kind == "nested":  # deep but not a poison pill
        return (b'{"event_id":"h%d","ts":%d,"campaign_id":"big","x":' % (i, ts)
                + b"[" * 40 + b"]" * 40 + b"}"), None
    if kind == "oversize":  # beyond max_event_bytes (64 KiB), well within the broker's limit
        return orjson.dumps({**good, "pad": "x" * 70_000}), None
    if kind == "internal":
        return orjson.dumps({**good, "is_internal": True}), None
    if kind == "bot":
        return orjson.dumps({**good, "user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}), None
    if kind == "late":  # before the stream's first window, sent in its second half: late
        # in any order of reading (a merely old event may not be, in a drained run)
        return orjson.dumps({**good, "ts": T0_MS - rng.randrange(1, 7200) * 1000}), None
    if kind == "duplicate":
        orig = rng.choice(originals)
        return orig.value, orig
    if kind == "poison_nested":  # issue 15: RecursionError in prepare
        return b'{"event_id":"p%d","ts":%d,"campaign_id":"big","u":' % (i, ts) + b"[" * 1000 \
            + b"]" * 1000 + b"}", None
    if kind == "poison_huge":  # issue 15: too big for the dead-letter producer's default
        head = b'{"event_id":"p%d","ts":%d,"campaign_id":"big","pad":"' % (i, ts)
        return head + b"x" * (1_040_000 - len(head) - 2) + b'"}', None
    raise ValueError(kind)


#: Hostile kinds and their weights (oversize ones are rare: 70 KB each).
HOSTILE_KINDS = {"not_json": 12, "binary": 8, "empty": 8, "wrong_type": 8, "missing_field": 8,
                 "ts_range": 8, "control_char": 10, "long_id": 4, "nested": 6, "oversize": 1,
                 "internal": 8, "bot": 8, "late": 2, "duplicate": 9}


def make_input(plan: Plan) -> tuple[list[Scheduled], Counter]:
    """The traffic, the forward-dated impression and the hostile messages, by time."""
    items = traffic(plan.minutes, seed=plan.seed, outage=(plan.minutes * 5 // 8,
                                                          plan.minutes * 5 // 8 + 45))
    imps = [i for i in items if i.topic == "impressions"]
    rng = random.Random(plan.seed)
    end_ms = T0_MS + plan.minutes * MIN_MS
    injected: Counter = Counter()
    extra: list[Scheduled] = []
    kinds = list(HOSTILE_KINDS)
    weights = list(HOSTILE_KINDS.values())
    poison = ["poison_nested", "poison_huge"] if plan.poison else []
    for i in range(plan.hostile):
        kind = poison[i] if i < len(poison) else rng.choices(kinds, weights)[0]
        lo = T0_MS + (plan.minutes * MIN_MS // 2 if kind == "late" else 0)
        at = rng.randrange(lo, end_ms)
        value, orig = _hostile_value(kind, i, rng, imps, at)
        if orig is not None:  # right after the message it repeats, in its partition
            extra.append(replace(orig))
        else:
            # Late events go with the impressions: a drained run reads the sparse click
            # partitions far ahead of the rest, and what is late there depends on the order.
            topic = "impressions" if kind == "late" or rng.random() < 0.8 else "clicks"
            extra.append(Scheduled(at, topic, rng.randrange(2), value))
        injected[kind] += 1
    forward = Scheduled(T0_MS + plan.minutes * MIN_MS // 2, "impressions", 0, orjson.dumps(
        {"event_id": "forward", "ts": int(time.time() * 1000) - 10 * MIN_MS,
         "campaign_id": "big", "device": "mobile"}))
    injected["forward_dated"] += 1
    return sorted([*items, *extra, forward]), injected


def produce_now(bootstrap: str, topics: dict[str, str], items: list[Scheduled]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                         "message.max.bytes": 2_000_000})
    for item in items:
        while True:
            try:
                producer.produce(topics[item.topic], item.value, partition=item.partition)
                break
            except BufferError:
                producer.poll(0.05)
    if producer.flush(120):
        raise RuntimeError("clean input not delivered")


# ------------------------------------------------------------------------- runs


@dataclass
class Run:
    outcome: Outcome
    log: str
    faults: list[str] = field(default_factory=list)
    unexpected_exits: list[int] = field(default_factory=list)


class _Services:
    def __init__(self, work: Path):
        self.work = work
        self.store = start_object_store(data_dir=work / "s3", log_dir=work)
        self.broker = start_broker(storage=self.store, log_dir=work)
        self.redis = start_redis()

    def close(self) -> None:
        for service in (self.redis, self.broker, self.store):
            with contextlib.suppress(Exception):  # best effort at the end
                service.stop()


def _settings_for(svc: _Services, name: str, slack_url: str, inputs: dict[str, str],
                  tail: bool) -> tuple[Path, Any, dict[str, str]]:
    topics = output_topics(svc.broker.bootstrap, inputs)
    text = config_yaml(svc.broker.bootstrap, topics, svc.redis.url, prefix=name,
                       slack_base_url=slack_url, extra="event_time:\n  idle_timeout: 1s\n")
    if tail:
        text = text.replace("  tail: false\n", "  tail: true\n")
    path = svc.work / f"{name}.yaml"
    path.write_text(text)
    return path, load_config_text(text, source=str(path),
                                  env={"SLACK_BOT_TOKEN": SLACK_TOKEN}), topics


def _fresh_inputs(svc: _Services) -> dict[str, str]:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    inputs = {"impressions": f"{prefix}-impressions", "clicks": f"{prefix}-clicks"}
    ensure_topics(svc.broker.bootstrap, list(inputs.values()), partitions=2)
    return inputs


def _without_topic(out: Outcome) -> Outcome:
    dead = Counter({(v, tuple(h for h in hs if h[0] != "ctrguard-source-topic")): n
                    for (v, hs), n in out.dead.items()})
    return replace(out, dead=dead)


def clean_run(svc: _Services, items: list[Scheduled], say) -> Run:
    inputs = _fresh_inputs(svc)
    produce_now(svc.broker.bootstrap, inputs, items)
    with SlackEmulator(token=SLACK_TOKEN) as slack:
        path, settings, topics = _settings_for(svc, "clean", slack.base_url, inputs, False)
        say("clean run: draining the whole input")
        proc = start_run(path, svc.work / "clean.log")
        rc = proc.wait(3600)
        if rc != 0:
            raise RuntimeError(f"the clean run exited {rc}:\n{proc.log()[-3000:]}")
        return Run(_without_topic(collect(svc.broker.bootstrap, topics, settings, slack)),
                   proc.log())


def chaos_run(svc: _Services, items: list[Scheduled], plan: Plan, say) -> Run:
    inputs = _fresh_inputs(svc)
    faults: list[str] = []
    exits: list[int] = []
    with SlackEmulator(token=SLACK_TOKEN) as slack:
        path, settings, topics = _settings_for(svc, "chaos", slack.base_url, inputs, True)
        recovery = svc.work / "chaos-recovery"
        init_recovery(recovery)
        log_path = svc.work / "chaos.log"
        started = time.monotonic()

        def note(text: str) -> None:
            faults.append(f"{time.monotonic() - started:6.1f}s  {text}")
            say(f"chaos: {text}")

        def launch():
            return start_run(path, log_path, recovery_dir=recovery, drain=False)

        proc = launch()
        deadline = time.monotonic() + 60
        while "running ctrguard" not in proc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        # Bursts of at most 75 % of the allowed lateness in event time (2 min here).
        producer = PacedProducer(svc.broker.bootstrap, inputs, items, plan.speed,
                                 tick_s=min(0.1, 90.0 / plan.speed))
        producer.start()
        actions = _actions(plan)
        for fraction, action, arg in actions:
            while producer.produced < fraction * len(items) and not producer.done.is_set():
                time.sleep(0.05)
                if proc.popen.poll() is not None:  # died by itself: note it, start again
                    exits.append(proc.popen.returncode)
                    note(f"the flow exited by itself (rc {proc.popen.returncode}); restarted")
                    if len(exits) > 5:
                        raise RuntimeError(f"the flow keeps dying:\n{proc.log()[-4000:]}")
                    expire_slack_lease(settings)
                    proc = launch()
            if action == "pause":
                note(f"flow stopped (SIGSTOP) for {arg:g}s")
                os.kill(proc.popen.pid, signal.SIGSTOP)
                time.sleep(arg)
                os.kill(proc.popen.pid, signal.SIGCONT)
            elif action == "redis":
                note(f"redis stopped (SIGSTOP) for {arg:g}s")
                pid = svc.redis.pid
                os.kill(pid, signal.SIGSTOP)
                time.sleep(arg)
                os.kill(pid, signal.SIGCONT)
            elif action == "broker":
                producer.hold()
                note("broker stopped and started (graceful)")
                svc.broker.restart()
                producer.release()
            elif action == "kill":
                note("flow killed (-9), restarted from its recovery directory")
                proc.kill9()
                expire_slack_lease(settings)
                proc = launch()
        if not producer.done.wait(3600) or producer.errors:
            raise RuntimeError(f"traffic not produced: {producer.errors[:3]}")
        time.sleep(3)  # caught up, partitions idle
        note("flow killed (-9); restarted with --drain to finish the input")
        proc.kill9()
        expire_slack_lease(settings)
        proc = start_run(path, log_path, recovery_dir=recovery)
        rc = proc.wait(3600)
        if rc != 0:
            exits.append(rc)
            note(f"the draining run exited {rc}")
        return Run(_without_topic(collect(svc.broker.bootstrap, topics, settings, slack)),
                   proc.log(), faults, exits)


def _actions(plan: Plan) -> list[tuple[float, str, float]]:
    """(fraction of the traffic produced, action, argument), in order."""
    acts: list[tuple[str, float]] = [("pause", s) for s in plan.pauses_s]
    acts.append(("redis", plan.redis_stop_s))
    if plan.broker_restart:
        acts.append(("broker", 0.0))
    kills = [("kill", 0.0)] * max(0, plan.kills - 1)
    # Interleave: a kill after every other fault, while any are left.
    ordered: list[tuple[str, float]] = []
    for act in acts:
        ordered.append(act)
        if kills:
            ordered.append(kills.pop())
    ordered.extend(kills)
    step = 0.9 / (len(ordered) + 1)
    return [(step * (i + 1), a, arg) for i, (a, arg) in enumerate(ordered)]


# ------------------------------------------------------------------------- checks


def _end_line(log: str) -> str | None:
    lines = re.findall(r"end of input: (conservation .*)", log)
    return lines[-1] if lines else None


def compare(clean: Run, run: Run, n_input: int) -> list[tuple[str, bool, str]]:
    """(check, held, detail) for everything the chaos run must reproduce."""
    c, r = clean.outcome, run.outcome
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str) -> None:
        checks.append((name, ok, detail))

    repeated = sum(len(v) > 1 for v in r.figures.values())
    differ = [k for k in c.figures if r.figures.get(k) != c.figures[k]]
    extra = set(r.figures) - set(c.figures)
    check("figures", not differ and not extra,
          f"{len(c.figures):,} windows; {len(differ)} differ or missing, {len(extra)} extra; "
          f"{r.figure_records - len(r.figures):,} at-least-once repeats "
          f"({repeated} not identical)" + (f" e.g. {differ[:2]}" if differ else ""))
    check("alert ids", r.alerts == c.alerts,
          f"{len(c.alerts):,} alerts; {len(set(c.alerts) ^ set(r.alerts))} differ")
    flag_diff = {k for k in set(c.flags) | set(r.flags) if c.flags.get(k) != r.flags.get(k)}
    check("quarantine flags", not flag_diff, f"{len(c.flags):,} flags; {len(flag_diff)} differ")
    lost, doubled = sum((c.dead - r.dead).values()), sum((r.dead - c.dead).values())
    sample = [(v[:120], dict(h)) for v, h in list((r.dead - c.dead) + (c.dead - r.dead))[:2]]
    check("dead letters", not lost and not doubled,
          f"{sum(c.dead.values()):,} dead letters; {lost} lost, {doubled} extra"
          + (f" e.g. {sample}" if sample else ""))
    twice_posts = sum(n > 1 for n in r.slack_posts.values())
    twice_updates = sum(n > 1 for n in r.slack_updates.values())

    def tops(posts: Counter) -> int:
        return sum(n for (thread, _text), n in posts.items() if not thread)

    # Every incident message once, each in the clean run's final state. How many alerts an
    # incident's first post already lists depends on how the alerts were batched, which
    # differs when windows close at other moments (as assert_same_as_clean allows for two
    # processes); the message it becomes must not.
    check("slack messages", tops(r.slack_posts) == tops(c.slack_posts) and not twice_posts
          and not twice_updates and r.slack_final == c.slack_final and r.outbox_left == 0,
          f"{tops(c.slack_posts)} incident messages, {len(c.slack_final)} final texts; "
          f"same count: {tops(r.slack_posts) == tops(c.slack_posts)}, final texts equal: "
          f"{r.slack_final == c.slack_final}, first posts identical: "
          f"{r.slack_posts == c.slack_posts}, repeated posts {twice_posts}, updates "
          f"{twice_updates}, outbox left {r.outbox_left}")
    for name, log in (("conservation (clean)", clean.log), ("conservation (chaos)", run.log)):
        line = _end_line(log) or "no conservation line"
        consumed = sum(int(n) for n in re.findall(r"consumed (\d+)", line))
        check(name, line.startswith("conservation balanced") and consumed == n_input,
              f"{consumed:,} of {n_input:,} consumed; " + ("balanced" if line.startswith(
                  "conservation balanced") else "NOT balanced"))
    check("flow exits", not run.unexpected_exits,
          f"unexpected exits: {run.unexpected_exits or 'none'}")
    return checks


def summary(plan: Plan, injected: Counter, n_input: int, run: Run,
            checks: list[tuple[str, bool, str]], seconds: float) -> str:
    lines = [f"chaos run: {plan.minutes / 60:g} h of traffic, {n_input:,} messages, "
             f"2 partitions per input topic, {plan.speed:g}x real time, {seconds:.0f}s",
             "injected:"]
    lines += [f"  {f}" for f in run.faults]
    hostile = ", ".join(f"{k} {n:,}" for k, n in sorted(injected.items()))
    lines.append(f"  messages: {hostile}")
    lines.append("held:" if all(ok for _, ok, _ in checks) else "held (FAILED where marked):")
    lines += [f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}" for name, ok, detail in checks]
    return "\n".join(lines)


def run_chaos(plan: Plan, work: Path, say=print) -> tuple[bool, str]:
    """Run it all; (everything held, the summary)."""
    started = time.monotonic()
    items, injected = make_input(plan)
    svc = _Services(work)
    try:
        clean = clean_run(svc, items, say)
        run = chaos_run(svc, items, plan, say)
    finally:
        svc.close()
    checks = compare(clean, run, len(items))
    text = summary(plan, injected, len(items), run, checks, time.monotonic() - started)
    return all(ok for _, ok, _ in checks), text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Chaos run (issue 15): one day of traffic through ctrguard run while the "
        "flow is paused and killed, Redis and the broker stopped, hostile messages injected; "
        "every output compared with a clean run. Exit 0 when everything held.")
    p.add_argument("--short", action="store_true", help="the short form CI runs (~1 min)")
    p.add_argument("--hours", type=float, default=None, help="hours of traffic (default 24)")
    p.add_argument("--speed", type=float, default=None,
                   help="event-time seconds per wall-clock second (default 240)")
    p.add_argument("--hostile", type=int, default=None, help="hostile messages (default 10000)")
    p.add_argument("--no-poison", action="store_true",
                   help="leave out the two poison pills of issue 15")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--work-dir", type=Path, default=None,
                   help="where logs and configurations go (default: a temporary directory)")
    args = p.parse_args(argv)
    plan = SHORT if args.short else FULL
    changes: dict[str, Any] = {}
    if args.hours is not None:
        changes["minutes"] = int(args.hours * 60)
    for name in ("speed", "hostile", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.no_poison:
        changes["poison"] = False
    plan = replace(plan, **changes)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="ctrguard-chaos-"))
    work.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say(f"chaos: logs in {work}")
    try:
        ok, text = run_chaos(plan, work, say)
    except KeyboardInterrupt:
        return 130
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
