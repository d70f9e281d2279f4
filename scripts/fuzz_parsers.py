"""Long fuzz session of quant's file parsers: every input must parse or fail with a QuantError.

    python scripts/fuzz_parsers.py                      # default budget (~150k inputs, a few minutes)
    python scripts/fuzz_parsers.py --scale 0.1          # quick smoke run
    python scripts/fuzz_parsers.py --json fuzz.json     # also write the counts as JSON

Targets (seeded by real files quant, TensorRT-style writers and ONNX Runtime produce):

* ``cache-bytes``  -- ``parse_cache_bytes`` on mutated TensorRT / legacy / ONNX Runtime json,
  text and flatbuffers caches, and on random bytes;
* ``cache-files``  -- ``read_cache`` on a cache + sidecar pair where either file is mutated;
* ``cache-roundtrip`` -- hypothesis: any float32 amax, any tensor name (colons, spaces,
  unicode) through ``write_cache`` / ``read_cache`` and ``format_trt_cache`` / ``parse_trt_cache``;
* ``stats-files``  -- ``load_stats`` on byte-mutated and structurally mutated ``.stats.npz``;
* ``stats-roundtrip`` -- hypothesis: random activations through ``StatsCollector`` ->
  ``save_stats`` -> ``load_stats``;
* ``preprocess``   -- ``parse_preprocess`` + ``spec_from_input`` on mutated / generated specs;
* ``reports``      -- ``Report.from_dict`` on structurally mutated reports, ``load_report`` on
  byte-mutated ones;
* ``arrays``       -- ``NpyDataset`` / ``NpzDataset`` (open, iterate) on mutated files.

A "crash" is any exception that is not a ``quant.errors.QuantError`` (or an assertion failure
of a round trip). Crashes are counted, the first inputs of each kind saved under
``--crash-dir``, and the script exits 1 if there was any. Results are recorded in
docs/RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import math
import os
import random
import string
import struct
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from quant.errors import QuantError

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# Bookkeeping
# --------------------------------------------------------------------------------------------


class Tally:
    """Inputs tried, outcomes, and crashes of one target."""

    def __init__(self, name: str, crash_dir: Path) -> None:
        self.name = name
        self.tried = 0
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.crashes: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}
        self.crash_dir = crash_dir
        self.seconds = 0.0

    def run(self, fn: Callable[[], Any], data: bytes | str | None = None) -> None:
        self.tried += 1
        try:
            fn()
        except QuantError as exc:
            self.outcomes[type(exc).__name__] += 1
        except Exception as exc:  # noqa: BLE001 - this is what the fuzzer looks for
            key = f"{type(exc).__name__}: {str(exc)[:120]}"
            self.crashes[type(exc).__name__] += 1
            if key not in self.examples and len(self.examples) < 20:
                self.examples[key] = "".join(traceback.format_exception(exc)[-6:])
                if data is not None:
                    self.crash_dir.mkdir(parents=True, exist_ok=True)
                    blob = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
                    (self.crash_dir / f"{self.name}-{len(self.examples)}.bin").write_bytes(blob)
        else:
            self.outcomes["ok"] += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "tried": self.tried,
            "seconds": round(self.seconds, 1),
            "outcomes": dict(self.outcomes.most_common()),
            "crashes": dict(self.crashes),
            "crash_examples": self.examples,
        }


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

TOKENS = [
    b"TRT-", b"TRT-8600-EntropyCalibration2\n", b"TRT-101300-MinMaxCalibration\n", b": ", b":", b"\n", b"\r\n",
    b"\r", b"\x00", b"\xff", b"\xef\xbb\xbf", b"0", b"7fc00000", b"7f800000", b"ff800000", b"80000000", b"bf800000",
    b"ffffffff", b"00000001", b"3c010a14", b"nan", b"inf", b"-1", b"1e309", b"{", b"}", b"[", b"]", b'"', b",",
    b"null", b"true", b"1 0.5 2048\n", "\u00e9\u4e2d\U0001f600".encode(), b"\xc3\x28", b" ", b"\t", b"=", b"/",
    b"PK\x03\x04", b"\x93NUMPY",
]


def mutate_bytes(rng: random.Random, data: bytes, others: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 5, 8))):
        op = rng.random()
        if op < 0.3 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.4 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op < 0.55 and b:
            i = rng.randrange(len(b))
            del b[i : i + rng.choice((1, 2, 4, 16, 64))]
        elif op < 0.7:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice(TOKENS)
        elif op < 0.8:
            b = b[: rng.randrange(len(b) + 1)]
        elif op < 0.88 and b:
            i = rng.randrange(len(b))
            j = min(len(b), i + rng.randrange(1, 64))
            b[i:i] = b[i:j]
        elif op < 0.95 and others:
            o = rng.choice(others)
            if o:
                i, j = rng.randrange(len(b) + 1), rng.randrange(len(o))
                b[i:] = o[j:]
        elif b:  # swap two lines
            lines = bytes(b).split(b"\n")
            if len(lines) > 2:
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
                b = bytearray(b"\n".join(lines))
    return bytes(b)


def random_bytes(rng: random.Random) -> bytes:
    n = rng.choice((0, 1, 2, 8, 64, 512))
    return bytes(rng.randrange(256) for _ in range(n))


def random_json(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 2 or r < 0.5:
        return rng.choice([
            None, True, False, 0, -1, 1, 2**63, -(2**70), 1.5, -0.0, 1e308, "", "x", "nan", "\u2028", "1.0.0",
            rng.random() * 1e6, "".join(rng.choice(string.printable) for _ in range(rng.randrange(12))),
        ])
    if r < 0.75:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "name", "schema", "top1", "version", ""]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate_json(rng: random.Random, doc: Any) -> Any:
    """A deep copy of ``doc`` with a few random nodes replaced, deleted or retyped."""
    doc = json.loads(json.dumps(doc))
    for _ in range(rng.choice((1, 1, 2, 4))):
        path: list[Any] = []
        node = doc
        while isinstance(node, (dict, list)) and node and rng.random() < 0.8:
            key = rng.choice(list(node)) if isinstance(node, dict) else rng.randrange(len(node))
            path.append(key)
            node = node[key]
        if not path:
            doc = random_json(rng)
            continue
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        op = rng.random()
        if (op < 0.35 and isinstance(parent, dict)) or (op < 0.45 and isinstance(parent, list)):
            del parent[last]
        else:
            parent[last] = random_json(rng)
    return doc


# --------------------------------------------------------------------------------------------
# Seeds
# --------------------------------------------------------------------------------------------


def make_seeds(work: Path) -> dict[str, Any]:
    """Real files to mutate: the demo calibrated by quant, ONNX Runtime tables, a report."""
    from quant import api
    from quant.config import DataOptions, EvalOptions

    cache = work / "model.cache"
    api.calibrate(None, DataOptions("demo:calib", max_samples=64), cache=cache)
    report = api.evaluate(None, DataOptions("demo:eval", max_samples=64, batch_size=32), cache=cache,
                          options=EvalOptions(precisions=("fp32", "int8")), report=work / "report.json")
    caches = [
        cache.read_bytes(),
        b"1 0.5 2048\nconv: 3f800000\nrelu: 3c010a14\n",
        b"TRT-8601-EntropyCalibration2\r\nimages: 3b66eddc\r\nconv1/Relu:0: a14\r\nmodel/block 1: out: 3f800000\r\nunused: 0",
    ]
    try:  # ONNX Runtime's own writer: calibration.json / .flatbuffers / .cache
        from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
        from onnxruntime.quantization.quant_utils import write_calibration_table

        ort_dir = work / "ort"
        ort_dir.mkdir()
        data = {
            "input": TensorData(lowest=np.array(-2.5, np.float32), highest=np.array(2.5, np.float32)),
            "conv1/Relu:0": TensorData(lowest=np.array(0.0, np.float32), highest=np.array(6.0, np.float32)),
        }
        write_calibration_table(TensorsData(CalibrationMethod.MinMax, data), dir=str(ort_dir))
        caches += [p.read_bytes() for p in sorted(ort_dir.iterdir())]
    except Exception as exc:  # noqa: BLE001 - optional seeds
        print(f"(no ONNX Runtime calibration-table seeds: {exc})", file=sys.stderr)
    arrays_dir = work / "arrays"
    arrays_dir.mkdir()
    rng = np.random.default_rng(0)
    x = rng.random((6, 1, 4, 4), dtype=np.float32)
    np.save(arrays_dir / "a.npy", x)
    np.savez(arrays_dir / "a.npz", input=x, labels=np.arange(6))
    np.savez_compressed(arrays_dir / "b.npz", input=x, labels=np.arange(6))
    return {
        "cache_path": cache,
        "caches": caches,
        "sidecar": Path(str(cache) + ".json").read_bytes(),
        "stats": Path(str(cache) + ".stats.npz").read_bytes(),
        "report_dict": report.to_dict(),
        "report_bytes": (work / "report.json").read_bytes(),
        "npy": (arrays_dir / "a.npy").read_bytes(),
        "npz": [(arrays_dir / "a.npz").read_bytes(), (arrays_dir / "b.npz").read_bytes()],
    }


# --------------------------------------------------------------------------------------------
# Targets
# --------------------------------------------------------------------------------------------


def fuzz_cache_bytes(t: Tally, rng: random.Random, n: int, seeds: dict[str, Any]) -> None:
    from quant.cache.detect import parse_cache_bytes

    caches = seeds["caches"]
    for _ in range(n):
        data = random_bytes(rng) if rng.random() < 0.05 else mutate_bytes(rng, rng.choice(caches), caches)
        t.run(functools.partial(parse_cache_bytes, data, source="fuzz.cache"), data)


def fuzz_cache_files(t: Tally, rng: random.Random, n: int, seeds: dict[str, Any], work: Path) -> None:
    from quant.cache.io import read_cache

    cache_bytes, side_bytes = seeds["caches"][0], seeds["sidecar"]
    cache, side = work / "f.cache", work / "f.cache.json"
    for _ in range(n):
        c, s = cache_bytes, side_bytes
        r = rng.random()
        if r < 0.4:
            c = mutate_bytes(rng, c, [])
        elif r < 0.8:
            s = mutate_bytes(rng, s, []) if rng.random() < 0.5 else json.dumps(mutate_json(rng, json.loads(s))).encode()
        else:
            c, s = mutate_bytes(rng, c, []), mutate_bytes(rng, s, [])
        cache.write_bytes(c)
        side.write_bytes(s)
        t.run(lambda: read_cache(cache, require_sidecar=True), c + b"\n----sidecar----\n" + s)


def fuzz_stats_files(t: Tally, rng: random.Random, n: int, seeds: dict[str, Any], work: Path) -> None:
    from quant.calibrators.stats_io import load_stats

    seed = seeds["stats"]
    with np.load(io.BytesIO(seed), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    path = work / "f.stats.npz"
    kinds = [np.float64, np.float32, np.int64, np.int8, np.uint64, np.bool_, np.complex64, "U3", "S2"]
    for _ in range(n):
        if rng.random() < 0.5:
            data = mutate_bytes(rng, seed, [])
        else:  # structural: retype / reshape / drop an array, or mutate the metadata JSON
            a = dict(arrays)
            key = rng.choice(list(a))
            op = rng.random()
            if key == "meta" and op < 0.6:
                a["meta"] = np.array(json.dumps(mutate_json(rng, json.loads(str(a["meta"])))))
            elif op < 0.3:
                del a[key]
            elif op < 0.6:
                a[key] = a[key].astype(rng.choice(kinds))
            elif op < 0.8:
                shape = rng.choice([(), (0,), (1,), (3, 2), a[key].shape[:1], (a[key].size,)])
                a[key] = np.resize(a[key], shape)
            else:
                v = a[key].copy()
                if v.size and v.dtype.kind in "fiu":
                    flat = v.reshape(-1)
                    flat[rng.randrange(flat.size)] = rng.choice([-1, 0, 2**40, np.nan if v.dtype.kind == "f" else 7])
                a[key] = v
            buf = io.BytesIO()
            np.savez(buf, **a)
            data = buf.getvalue()
        path.write_bytes(data)
        t.run(lambda: load_stats(path), data)


def fuzz_preprocess(t: Tally, rng: random.Random, n: int) -> None:
    from quant.backends.base import TensorSpec
    from quant.datasets.preprocess import PreprocessSpec, parse_preprocess, spec_from_input

    keys = ["preset", "resize", "mean", "std", "scale", "color", "layout", "size", "interpolation", "crop", ""]
    values = ["imagenet", "unit", "raw", "tf", "imagenet-caffe", "none", "0", "-1", "256", "224x224", "0x0",
              "1e309", "nan", "inf", "0.485/0.456/0.406", "1/2", "//", "rgb", "bgr", "gray", "nchw", "nhwc",
              "bilinear", "lanczos", "x", "", "1/0", "3.5", "\u00e9"]
    specs = [
        TensorSpec("input", ("N", 3, 224, 224), np.dtype(np.float32)),
        TensorSpec("input", ("N", 1, 28, 28), np.dtype(np.float32)),
        TensorSpec("input", ("N", "H", "W", 3), np.dtype(np.float32)),
        TensorSpec("input", ("N", 3, "H", "W"), np.dtype(np.float16)),
    ]

    def check(text: str, spec: TensorSpec) -> None:
        overrides = parse_preprocess(text)
        result = spec_from_input(spec, overrides)
        assert isinstance(result, PreprocessSpec)
        assert PreprocessSpec(**{**result.to_dict(), "mean": tuple(result.mean), "std": tuple(result.std)}) == result

    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            text = ",".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randrange(1, 5)))
        elif r < 0.8:
            text = rng.choice(values)
        else:
            base = ",".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(2))
            text = mutate_bytes(rng, base.encode(), []).decode("utf-8", "replace")
        spec = rng.choice(specs)
        t.run(functools.partial(check, text, spec), text)


def fuzz_reports(t: Tally, rng: random.Random, n: int, seeds: dict[str, Any], work: Path) -> None:
    from quant.report.schema import Report, load_report
    from quant.report.table import render_table

    doc, raw = seeds["report_dict"], seeds["report_bytes"]
    path = work / "f.report.json"

    def from_dict(d: Any) -> None:
        rep = Report.from_dict(d, source="fuzz.json")
        render_table(rep)  # a report that loads must also render

    for _ in range(n):
        if rng.random() < 0.7:
            d = mutate_json(rng, doc)
            t.run(functools.partial(from_dict, d), json.dumps(d))
        else:
            data = mutate_bytes(rng, raw, [])
            path.write_bytes(data)
            t.run(lambda: render_table(load_report(path)), data)


def fuzz_arrays(t: Tally, rng: random.Random, n: int, seeds: dict[str, Any], work: Path) -> None:
    from quant.backends.base import TensorSpec
    from quant.datasets.arrays import NpyDataset, NpzDataset

    spec = TensorSpec("input", ("N", 1, 4, 4), np.dtype(np.float32))

    def read(path: Path) -> None:
        ds = NpyDataset(path, input=spec) if path.suffix == ".npy" else NpzDataset(path, inputs=[spec])
        for _batch in ds.batches(4):
            pass
        ds.fingerprint()

    for _ in range(n):
        k = rng.randrange(3)
        seed = seeds["npy"] if k == 0 else seeds["npz"][k - 1]
        data = mutate_bytes(rng, seed, [])
        path = work / ("f.npy" if k == 0 else "f.npz")
        path.write_bytes(data)
        t.run(functools.partial(read, path), data)


# --------------------------------------------------------------------------------------------
# Hypothesis round trips
# --------------------------------------------------------------------------------------------


def hypothesis_roundtrips(tallies: dict[str, Tally], budget: dict[str, int], work: Path, seed: int) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st

    from quant.cache.io import read_cache, write_cache
    from quant.cache.trt import format_trt_cache, parse_trt_cache, scale_for_amax
    from quant.calibrators.stats import StatsCollector
    from quant.calibrators.stats_io import load_stats, save_stats

    name_chars = st.characters(blacklist_categories=("Cs", "Cc"))
    names = st.text(name_chars | st.sampled_from(list(":: /\t")), min_size=1, max_size=40)
    amax = st.floats(min_value=1e-30, max_value=3.4e38, allow_nan=False, allow_infinity=False).filter(
        lambda a: 0 < scale_for_amax(a) < math.inf
    )
    f32 = st.integers(min_value=0x00800000, max_value=0x7F7FFFFF).map(lambda b: struct.unpack(">f", b.to_bytes(4, "big"))[0])
    def cfg(n: int) -> settings:
        return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))

    cache_t = tallies["cache-roundtrip"]

    @hseed(seed)
    @cfg(max(1, budget.get("cache-roundtrip", 0)))
    @given(st.dictionaries(names, amax | f32.map(lambda s: s * 127.0), min_size=1, max_size=6))
    def cache_roundtrip(table: dict[str, float]) -> None:
        def check() -> None:
            text = format_trt_cache(table, trt_version=8600, algorithm="EntropyCalibration2")
            parsed = parse_trt_cache(text, source="rt")
            assert list(parsed.amax) == list(table), (list(parsed.amax), list(table))
            for k, v in table.items():
                assert scale_for_amax(parsed.amax[k]) == scale_for_amax(v)
            path = work / "rt.cache"
            write_cache(path, {"method": "entropy", "params": {}, "amax": table})
            loaded = read_cache(path, require_sidecar=True)
            assert loaded.amax == table  # the sidecar keeps the exact float64 values

        cache_t.run(check, json.dumps(table, ensure_ascii=True))

    stats_t = tallies["stats-roundtrip"]

    @hseed(seed)
    @cfg(max(1, budget.get("stats-roundtrip", 0)))
    @given(
        st.lists(st.tuples(names, st.integers(0, 2**31), st.sampled_from([0.0, 1e-3, 1.0, 1e3, 1e30])),
                 min_size=1, max_size=4, unique_by=lambda x: x[0]),
    )
    def stats_roundtrip(spec: list[tuple[str, int, float]]) -> None:
        def check() -> None:
            collector = StatsCollector(128)
            for name, s, scale in spec:
                r = np.random.default_rng(s)
                for b in range(2):
                    collector.collect(name, (r.standard_normal(r.integers(1, 50)) * scale).astype(np.float32), batch_index=b)
            stats = collector.stats()
            path = work / "rt.stats.npz"
            save_stats(path, stats, {"num_samples": 2, "model_fingerprint": "m", "data_fingerprint": "d"})
            back, meta = load_stats(path)
            assert list(back) == list(stats) and meta["names"] == list(stats)
            for k in stats:
                a, b2 = stats[k], back[k]
                assert (a.count, a.min, a.max, a.absmax, a.hist_range) == (b2.count, b2.min, b2.max, b2.absmax, b2.hist_range)
                assert np.array_equal(a.counts, b2.counts)

        stats_t.run(check, json.dumps(spec))

    for fn, tally in ((cache_roundtrip, cache_t), (stats_roundtrip, stats_t)):
        if not budget.get(tally.name):
            continue
        start = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - a failing round trip is a finding, not a crash of the script
            tally.crashes["roundtrip-failure"] += 1
            tally.examples[f"{type(exc).__name__}: {str(exc)[:200]}"] = "".join(traceback.format_exception(exc)[-6:])
        tally.seconds += time.perf_counter() - start


# --------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every target's budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None, help="write the tallies here")
    ap.add_argument("--crash-dir", type=Path, default=Path("fuzz-crashes"))
    ap.add_argument("--only", nargs="*", default=None, help="run only these targets")
    args = ap.parse_args()
    budget = {
        "cache-bytes": 60_000, "cache-files": 15_000, "cache-roundtrip": 5_000, "stats-files": 15_000,
        "stats-roundtrip": 2_000, "preprocess": 30_000, "reports": 20_000, "arrays": 15_000,
    }
    budget = {k: max(1, int(v * args.scale)) for k, v in budget.items() if args.only is None or k in args.only}
    rng = random.Random(args.seed)
    tallies = {k: Tally(k, args.crash_dir) for k in budget}
    tallies.setdefault("cache-roundtrip", Tally("cache-roundtrip", args.crash_dir))
    tallies.setdefault("stats-roundtrip", Tally("stats-roundtrip", args.crash_dir))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="quant-fuzz-") as tmp:
        work = Path(tmp)
        seeds = make_seeds(work)
        runners: dict[str, Callable[[Tally, int], None]] = {
            "cache-bytes": lambda t, n: fuzz_cache_bytes(t, rng, n, seeds),
            "cache-files": lambda t, n: fuzz_cache_files(t, rng, n, seeds, work),
            "stats-files": lambda t, n: fuzz_stats_files(t, rng, n, seeds, work),
            "preprocess": lambda t, n: fuzz_preprocess(t, rng, n),
            "reports": lambda t, n: fuzz_reports(t, rng, n, seeds, work),
            "arrays": lambda t, n: fuzz_arrays(t, rng, n, seeds, work),
        }
        for name, n in budget.items():
            if name in runners:
                start = time.perf_counter()
                runners[name](tallies[name], n)
                tallies[name].seconds = time.perf_counter() - start
                print(f"{name:16s} {tallies[name].tried:8d} inputs  {tallies[name].seconds:6.1f} s  "
                      f"crashes {sum(tallies[name].crashes.values())}", flush=True)
        hyp = [k for k in ("cache-roundtrip", "stats-roundtrip") if k in budget]
        if hyp:
            hypothesis_roundtrips(tallies, budget, work, args.seed)
            for k in hyp:
                print(f"{k:16s} {tallies[k].tried:8d} inputs  {tallies[k].seconds:6.1f} s  "
                      f"crashes {sum(tallies[k].crashes.values())}", flush=True)
    total = sum(t.tried for t in tallies.values())
    crashes = sum(sum(t.crashes.values()) for t in tallies.values())
    summary = {
        "seed": args.seed,
        "total_inputs": total,
        "total_crashes": crashes,
        "seconds": round(time.perf_counter() - started, 1),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "targets": {k: t.to_dict() for k, t in tallies.items() if t.tried},
    }
    print(f"total: {total} inputs, {crashes} crashes, {summary['seconds']} s")
    for t in tallies.values():
        for key, tb in t.examples.items():
            print(f"\n[{t.name}] {key}\n{tb}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if crashes else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
