"""Training fed live against fed from memory, an older commit's code against today's, interleaved.

One ``make bench`` run measures training live / from memory once per round inside a 13-minute run;
two such runs minutes apart differ by more than the change being judged (docs/benchmarks.md). Here
each side runs in its own process (the two commits' packages cannot share one interpreter), the
processes alternate after, before, after, before on one broker, and each trains 3 rounds of a live
and a memory run, in alternating order, with the bench's own parts (``workbench/bench/training.py``:
the trainer's U-Net, compiled step, reader, pipeline and batcher; 4 partitions, configs/bench.yaml).
"cores busy" is the process's CPU time over a run's wall time. How it was run (2026-12-06, 08:29 UTC,
nothing else on the machine; the older commit checked out with ``git worktree add``):

    stream-trainer broker --port 19092 &
    for i in 1 2; do for tag in after before; do
      PYTHONPATH=<main or the 3c02c47 worktree> TF_CPP_MIN_LOG_LEVEL=2 \
        python train_before_after.py 127.0.0.1:19092 3 $tag > $tag-$i.json
    done; done

The per-thread CPU split it also records did not name the reader threads (TensorFlow's pool threads
carry no Python name): every live run's CPU landed on TensorFlow's threads and the main thread.
"""
import json, os, sys, threading, time, statistics as st, resource
from collections import Counter
import stream_trainer
from stream_trainer.workbench.bench import config as bconfig, training
from stream_trainer.workbench.bench.contenders import Context
from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all
from stream_trainer.kafka import Cluster

TICK = os.sysconf("SC_CLK_TCK")
def cpu_of_threads():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            f = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = (int(f[11]) + int(f[12])) / TICK
    return out

names = {}
def name_sampler(stop):
    while not stop.is_set():
        for t in threading.enumerate():
            if t.native_id is not None:
                names[t.native_id] = "".join(c for c in t.name if not c.isdigit())
        time.sleep(0.05)

def proc_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

bootstrap, rounds, tag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
settings, bench = bconfig.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../../configs/bench.yaml"), overrides={"kafka.bootstrap_servers": bootstrap})
ctx = Context(settings, bench)
cluster = Cluster(settings.kafka)
recs = make_records(800, 320, 0); vals = encode_all(recs)
w = produce_all(cluster, recs, vals, 4)
trainer = training.Trainer(settings)
batches = training.cached_batches(ctx, w)
training.memory(trainer, batches, 1, 1)
stop = threading.Event(); threading.Thread(target=name_sampler, args=(stop,), daemon=True).start()
res = {"tag": tag, "code": os.path.dirname(stream_trainer.__file__), "live": [], "memory": [], "live_cpu": [], "mem_cpu": []}
per = Counter()
for r in range(rounds):
    for kind in (("live", "memory") if r % 2 == 0 else ("memory", "live")):
        before, c0, t0 = cpu_of_threads(), proc_cpu(), time.monotonic()
        run = training.live(ctx, trainer, w) if kind == "live" else training.memory(trainer, batches, bench.train_warmup_steps, bench.train_steps)
        after, c1, t1 = cpu_of_threads(), proc_cpu(), time.monotonic()
        res[kind].append(run.steps_per_s)
        res["live_cpu" if kind == "live" else "mem_cpu"].append((c1 - c0) / (t1 - t0))
        if kind == "live":
            for tid, v in after.items():
                per[names.get(tid, "tf/native")] += v - before.get(tid, 0)
    print(f"{tag} round {r}: live {res['live'][-1]:.3f} memory {res['memory'][-1]:.3f} cores busy live {res['live_cpu'][-1]:.2f} mem {res['mem_cpu'][-1]:.2f}", file=sys.stderr, flush=True)
res["ratio_median"] = st.median(a / b for a, b in zip(res["live"], res["memory"]))
res["threads_live_cpu_s"] = dict(per.most_common(12))
print(json.dumps(res))
