"""What `make bench` compares on a device, what its result says (the efficiency the loader alone allows,
what bounds the pace), and the table it prints.

A variant is one way of feeding the model: the dataset kind ('disk': decode + the whole transform every
epoch, `data.cache: false`; 'cache': the decode cache with albumentations' per-image Normalize; 'u8':
the cache with uint8 batches normalised on the device, what training does with the cache), the
DataLoader workers, and torch's threads during the run. The headline variant is the one training and
prediction use by default on that device: no workers on the CPU, `train.num_workers: auto` beside a GPU.
Its twin without augmentation (`noaug_variant`) separates what the loop costs from what `augment.train` does.
"""

from __future__ import annotations

__all__ = ["Variant", "train_variants", "predict_variants", "loader_variants", "headline_variant", "noaug_variant",
           "augment_cost_lines", "tta_settings", "TARGETS", "expected_efficiency", "bound", "table"]

from typing import NamedTuple

# The efficiencies `make bench` aims at (issue 31): the loop around the model costs at most 7% / 5%.
TARGETS = {"training": 0.93, "prediction": 0.95}


class Variant(NamedTuple):
    kind: str                  # disk | cache | u8 | memory (TTA on batches already in memory)
    workers: int = 0           # DataLoader worker processes
    threads: int | None = None  # torch intra-op threads during the run (None: unchanged)
    train: bool = True         # loader variants: the training transform (else the evaluation one)
    augment: bool = True       # training variants: False drops augment.train (what the loop itself costs)


def train_variants(device_type: str, workers: int) -> dict[str, Variant]:
    """The training variants: on the CPU, the data paths and what a worker costs beside the model's
    threads; beside a GPU, the default (`workers` loader processes) against the main-process loader."""
    if device_type == "cpu":
        out = {"disk": Variant("disk"), "cache": Variant("cache"), "cache_u8": Variant("u8"),
               "cache_u8_w1": Variant("u8", 1), "cache_u8_w1_t1": Variant("u8", 1, 1)}
    else:
        out = {"cache_u8": Variant("u8")}
        if workers:
            out[f"disk_w{workers}"] = Variant("disk", workers)
            out[f"cache_u8_w{workers}"] = Variant("u8", workers)
    return _with_noaug_twin(out, headline_variant(device_type, workers))


def _with_noaug_twin(variants: dict[str, Variant], headline: str) -> dict[str, Variant]:
    """`variants` with the headline's twin without augmentation right after it (its row follows the default's)."""
    out = {}
    for name, v in variants.items():
        out[name] = v
        if name == headline:
            out[noaug_variant(name)] = v._replace(augment=False)
    return out


def predict_variants(device_type: str, workers: int) -> dict[str, Variant]:
    if device_type == "cpu":
        return {"memory": Variant("memory"), "disk": Variant("disk"), "cache": Variant("cache"),
                "cache_u8": Variant("u8")}
    out = {"memory": Variant("memory"), "cache_u8": Variant("u8")}
    if workers:
        out[f"cache_u8_w{workers}"] = Variant("u8", workers)
    return out


def loader_variants(device_type: str, workers: int) -> dict[str, Variant]:
    if device_type == "cpu":
        return {"cold_train": Variant("disk"), "warm_train": Variant("cache"), "warm_train_u8": Variant("u8"),
                "cold_eval": Variant("disk", train=False), "warm_eval_u8": Variant("u8", train=False)}
    out = {"warm_train_u8": Variant("u8"), "warm_eval_u8": Variant("u8", train=False)}
    if workers:
        out[f"cold_train_w{workers}"] = Variant("disk", workers)
        out[f"warm_train_u8_w{workers}"] = Variant("u8", workers)
    return out


def headline_variant(device_type: str, workers: int) -> str:
    """The variant training and prediction run by default on this device (`train.num_workers: auto`)."""
    return f"cache_u8_w{workers}" if device_type != "cpu" and workers else "cache_u8"


_KIND_LABELS = {"disk": "disk: decode + transform (cache off)", "cache": "cache warm, per-image Normalize",
                "u8": "cache warm, uint8 + batch Normalize", "memory": "in-memory batches (the views' own cost)"}


def _label(phase: str, name: str, d: dict, headline: str) -> str:
    """A measured variant's row label, from what the result records of it (kind, workers, threads)."""
    workers, threads = d["workers"], d.get("threads_set")
    extra = (f", {workers} worker{'s' if workers > 1 else ''}" if workers else "") + \
        (f", {threads} thread" if threads else "") + ("" if d.get("augment", True) else ", no augmentation")
    return f"{phase:<7}{_KIND_LABELS[d['kind']]}{extra}{' (default)' if name == headline else ''}"


def _loader_label(d: dict) -> str:
    state = "cold (decode + " if d["kind"] == "disk" else "warm (cache + "
    what = ("aug" if d["train"] else "eval transform") + \
        (", uint8, batch norm.)" if d["kind"] == "u8" else " + normalise)")
    workers = f", {d['workers']} workers" if d["workers"] else ""
    return f"loader {state}{what}{workers}"


def expected_efficiency(result: dict) -> None:
    """Cross-check, robust to load bursts: with the loader in the main process, a step costs the
    bare step plus the loader's time for one batch, so efficiency ~ t_bare / (t_bare + t_loader)."""
    bare = 1 / result["train"]["bare"]["images_per_s"]
    for variant, loader in (("disk", "cold_train"), ("cache", "warm_train"), ("cache_u8", "warm_train_u8")):
        if variant in result["train"] and loader in result["loader"]:
            data = 1 / result["loader"][loader]["images_per_s"]
            result["train"][variant]["efficiency_expected_from_loader"] = round(bare / (bare + data), 3)


def bound(result: dict) -> dict:
    """What sets the default training variant's pace: the model alone or its loader alone (the slower).

    The loader's rate is that of the default variant's loader (the same workers); with workers beside
    a GPU the two overlap, so the pipeline runs at about the slower one's pace.
    """
    headline = result["headline_variants"]["train"]
    workers = result["train"][headline]["workers"]
    loader_name = f"warm_train_u8_w{workers}" if workers else "warm_train_u8"
    bare = result["train"]["bare"]["images_per_s"]
    loader = result["loader"][loader_name]["images_per_s"]
    return {"by": "the loader" if loader < bare else "the model", "bare_images_per_s": bare,
            "loader_images_per_s": loader, "loader_variant": loader_name,
            "pipeline_images_per_s": result["train"][headline]["images_per_s"]}


def tta_settings(meta: dict) -> str:
    """How TTA ran, where the run recorded it apart from training (runs from before: nothing)."""
    p = meta.get("predict")
    if p is None:
        return ""
    return (f"; TTA batch {p['batch_size']}, amp {p['amp']}, channels_last {'on' if p['channels_last'] else 'off'}"
            " (as the predict stage runs it)")


def table(result: dict) -> str:
    """The result as the table `make bench` prints: one line per measured variant, then the headlines."""
    m = result["meta"]
    precision = f"amp {m.get('amp', 'off')}, channels_last {m.get('channels_last', False)}{tta_settings(m)}"
    lines = [f"bench: {m['model']} {m['image_size']}x{m['image_size']} ({m.get('data', 'demo')}), batch "
             f"{m['batch_size']}, {m['steps']} batches ({m['images']} images) per run, on {m['device']} "
             f"({precision}; {m['torch_threads']} torch threads, {m['cpus']} CPUs, OMP_WAIT_POLICY "
             f"{m['omp_wait_policy']}, allocator {m.get('allocator', 'C library defaults')}), median of {m['repeats']}; "
             f"load average (1 min) {m['load_before']} → {m['load_after']}",
             f"{'phase':<66}{'images/s':>10}{'efficiency':>12}{'expected':>10}{'peak RSS MB':>13}{'+MB':>8}"
             + ("  GPU MB" if m["device"].startswith("cuda") else "")]

    def row(label, d):
        eff = f"{d['efficiency']:.3f}" if "efficiency" in d else ""
        expected = d.get("efficiency_expected_from_loader")
        expected = f"{expected:.3f}" if expected is not None else ""
        gpu = f"{d['gpu_peak_mb']:>8.0f}" if "gpu_peak_mb" in d else ""
        workers = f"  (+workers {d['workers_rss_mb']:.0f} MB)" if "workers_rss_mb" in d else ""
        lines.append(f"{label:<66}{d['images_per_s']:>10.1f}{eff:>12}{expected:>10}{d['peak_rss_mb']:>13.0f}"
                     f"{d['peak_rss_delta_mb']:>8.0f}{gpu}{workers}")

    t, p, lo, heads = result["train"], result["predict"], result["loader"], result["headline_variants"]
    row("train  bare fwd+bwd+step, in-memory", t["bare"])
    for name, d in t.items():
        if name != "bare":
            row(_label("train", name, d, heads["train"]), d)
    lines.extend(_augmentation_line(t, heads["train"]))
    lines.extend(augment_cost_lines(result.get("augment"), t["bare"]["images_per_s"]))
    row(f"TTA    bare forward ({len(p['views'])} views), in-memory", p["bare"])
    lines.append(f"TTA views: {'+'.join(p['views'])}; images/s below counts every view (images x views)")
    for name, d in p.items():
        if name not in ("bare", "views"):
            row(_label("TTA", name, d, heads["predict"]), d)
    for name, d in lo.items():
        if name != "cache_build":
            row(_loader_label(d), d)
    cb = lo["cache_build"]
    lines.append(f"cache build ({cb['images']} images at {m['image_size']}px): {cb['seconds']:.2f}s, "
                 f"{cb['mb']:.1f} MB on disk; reuse check {cb['reuse_ms']:.1f} ms")
    bound = result.get("bound")
    if bound:
        lines.append(f"bound by {bound['by']}: the model alone {bound['bare_images_per_s']:.0f} images/s, the loader "
                     f"alone ({bound['loader_variant']}) {bound['loader_images_per_s']:.0f}, together "
                     f"{bound['pipeline_images_per_s']:.0f}")
    lines.extend(_large_lines(result.get("large")))
    lines.append("expected = bare / (bare + the loader's own time per batch): the efficiency the loader "
                 "alone allows, less sensitive to load bursts than the measured ratio")
    for phase, target in TARGETS.items():
        judged = result[f"{phase}_headline"]
        if judged["reliable"]:
            lines.append(f"headline: {phase} efficiency {judged['headline']} (target >= {target:.2f}), "
                         f"{heads['train' if phase == 'training' else 'predict']}")
        else:
            lines.append(f"headline: {phase} efficiency UNRELIABLE, {judged['why']}")
    return "\n".join(lines)


def noaug_variant(headline: str) -> str:
    """The training variant that differs from `headline` only by having no augmentation."""
    return headline.replace("cache_u8", "cache_u8_noaug", 1)


def _augmentation_line(train: dict, headline: str) -> list[str]:
    """How much of the default training variant's efficiency its augmentations (augment.train) take."""
    plain, bare_loop = train.get(headline), train.get(noaug_variant(headline))
    if not plain or not bare_loop:
        return []
    return [f"the augmentations take {bare_loop['efficiency'] - plain['efficiency']:.3f} of the training "
            f"efficiency: without them the loop runs at {bare_loop['efficiency']:.3f} of the bare model"]


def augment_cost_lines(augment: dict | None, bare_images_per_s: float) -> list[str]:
    """Each augmentation's own time per image (alone, at its p) against the bare model's time per image."""
    if not augment or not augment["steps"]:
        return []
    steps = ", ".join(f"{s['name']} {s['us_per_image']:.0f} us (p {s['p']:g})" for s in augment["steps"])
    return [f"augment.train per image, each alone at its p ({augment['images']} images at {augment['size']} px): "
            f"{steps}; all {augment['all_us_per_image']:.0f} us, against {1e6 / bare_images_per_s:.0f} us of the "
            f"bare model's step"]


def _large_lines(lg: dict | None) -> list[str]:
    """The table's two lines on the large-image case (none when it was skipped)."""
    if not lg:
        return []
    return [f"large: {lg['images']} JPEGs 384x512 → {lg['size']}: decode {lg['decode_ms_per_image']:.2f} ms + "
            f"resize {lg['resize_ms_per_image']:.2f} ms per image; loader cold "
            f"{lg['loader']['cold']['images_per_s']:.0f}/s, warm {lg['loader']['warm_u8']['images_per_s']:.0f}/s "
            f"(uint8) / {lg['loader']['warm']['images_per_s']:.0f}/s (normalised); cache build "
            f"{lg['cache_build_s']:.2f}s ({lg['cache_build_s_1thread']:.2f}s on 1 thread), {lg['cache_mb']:.0f} MB",
            f"large: the cache saves {lg['saved_ms_per_image']:.2f} ms per image per epoch = "
            f"{lg['saved_s_per_epoch_at_18900_images']:.0f} s per epoch at 18,900 images "
            f"(cache {lg['cache_gb_at_18900_images']:.2f} GB)"]
