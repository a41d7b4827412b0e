"""The ceiling: consume the input topics with confluent-kafka and do nothing with the messages."""

from __future__ import annotations

import gc
import time

from bench.common import BATCH_SIZE


def raw_consume(bootstrap: str, topics: list[str], partitions: int,
                batch_size: int = BATCH_SIZE, timeout: float = 600.0
                ) -> tuple[int, float, float, float]:
    """Read every partition of ``topics`` from the beginning to EOF: (messages, seconds,
    CPU seconds of the calling thread, CPU seconds of the process).

    The consumer settings are the ones ctrguard's source uses, and so are the process's
    garbage-collector thresholds (``ctrguard.flows.engine.tune_gc``: with CPython's defaults, the
    5,000 GC-tracked messages of each batch set off collections that took about a third of
    the consuming thread's time); the loop touches each message's value (as any consumer
    must) and nothing else. The calling thread's CPU is what consuming costs the thread
    that would also process the events (librdkafka's own threads fetch and decompress:
    they are in the process's figure); the process's figure is only this consumer's when
    nothing else runs in the process meanwhile.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from ctrguard.flows.engine import tune_gc
    from ctrguard.flows.source import CONSUMER_TUNING

    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "bench-raw-unused",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        **CONSUMER_TUNING,
    })
    parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(partitions)]
    eof_code = KafkaError._PARTITION_EOF
    at_eof: set[tuple[str, int]] = set()
    n = 0
    thresholds = gc.get_threshold()
    tune_gc()
    try:
        t0 = time.perf_counter()
        thread0, process0 = time.thread_time(), time.process_time()
        consumer.assign(parts)
        deadline = time.monotonic() + timeout
        while len(at_eof) < len(parts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consume: {n} messages, {len(at_eof)} partitions at EOF")
            for msg in consumer.consume(num_messages=batch_size, timeout=0.5):
                err = msg.error()
                if err is None:
                    msg.value()
                    n += 1
                elif err.code() == eof_code:
                    at_eof.add((msg.topic(), msg.partition()))
                else:
                    raise RuntimeError(f"raw consume: {err}")
        elapsed = time.perf_counter() - t0
        thread_s, process_s = time.thread_time() - thread0, time.process_time() - process0
    finally:
        consumer.close()
        gc.set_threshold(*thresholds)
    return n, elapsed, thread_s, process_s
