"""Command line: ``birdsound analyze | listen | devices | info | train | ensemble | evaluate | embed | export``.

Thin on purpose: parses options, calls the stages, turns their errors into one clear line.
"""

from __future__ import annotations

import os
import sys
import warnings

import click

from .detect import DEFAULT_MIN_CONF, DetectOptions, SpeciesListError, load_species_list, load_thresholds

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def fail(msg: str, code: int = 2) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def load_model_or_fail(path: str | None, threads: int | None = None, fast: bool = False, run: bool = True):
    """Open a model file (None: the shipped one, its ONNX export with `fast`), or exit with one line;
    `threads` also sets torch's (process-wide) threads for torch models (ONNX models run without torch)."""
    from .runtime import COREML_ELSEWHERE, ModelError, default_model_path, load_model

    try:
        model = load_model(path or default_model_path(fast), threads=threads)
    except ModelError as e:
        fail(f"--model {e}")
    if run and not model.runnable:
        fail(f"--model {model.path}: {COREML_ELSEWHERE}")
    if threads and model.kind not in ("onnx", "coreml"):
        import torch

        torch.set_num_threads(threads)
    return model


def detect_options(model, min_conf, sensitivity, top_n, include, exclude, thresholds) -> DetectOptions:
    labels = model.labels
    try:
        return DetectOptions(
            min_conf=min_conf, sensitivity=sensitivity, top_n=top_n,
            include=load_species_list(include, labels) if include else None,
            exclude=load_species_list(exclude, labels) if exclude else frozenset(),
            thresholds=load_thresholds(thresholds, labels) if thresholds else {})
    except SpeciesListError as e:
        fail(str(e))


def detection_flags(f):
    """Options shared by analyze and listen (same rules for batch and live)."""
    opts = [
        click.option("-m", "--model", "model_path", type=click.Path(),
                     help="Model file: birdsound checkpoint, exported .pt/.ptl/.onnx/.pte (default: the shipped model; "
                          "analyze and listen run its ONNX export with onnxruntime)."),
        click.option("--overlap", type=float, default=0.0, show_default=True,
                     help="Overlap of consecutive windows in seconds (0 to window - 0.1)."),
        click.option("--min-conf", type=click.FloatRange(0.0, 1.0), default=DEFAULT_MIN_CONF, show_default=True,
                     help="Minimum confidence of a detection."),
        click.option("--sensitivity", type=click.FloatRange(0.5, 1.5), default=1.0, show_default=True,
                     help="Detection sensitivity (BirdNET's meaning): higher values give more detections."),
        click.option("--top-n", type=click.IntRange(min=1), default=None,
                     help="Keep at most N species per window."),
        click.option("--include", type=click.Path(dir_okay=False),
                     help="File of species to report (one scientific, common or full name per line)."),
        click.option("--exclude", type=click.Path(dir_okay=False), help="File of species never to report."),
        click.option("--thresholds", type=click.Path(dir_okay=False),
                     help="CSV 'name,threshold' of per-species minimum confidences."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def check_overlap(model, overlap: float) -> None:
    w = model.meta.window_s
    if not 0.0 <= overlap <= w - 0.1 + 1e-9:
        fail(f"--overlap {overlap}: must be between 0 and {w - 0.1:.1f} s (window is {w} s)")


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="birdsound")
def main() -> None:
    """birdsound: fast, compact bird species recognition.

    \b
    Analyse recordings:      birdsound analyze recordings/ -o results/
    Listen to a microphone:  birdsound listen
    Export for a phone app:  birdsound export -o bird.ptl --format lite
    Model details:           birdsound info
    """
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Output folder; results mirror the input tree (default: beside each recording).")
@detection_flags
@click.option("--rtype", "rtypes", multiple=True, type=click.Choice(["csv", "table", "audacity", "json"]),
              help="Result format; repeat for several (default: table). csv: BirdNET's columns; "
                   "table: Raven Pro selection table; audacity: label track; json: detections and model metadata.")
@click.option("--combine", is_flag=True, help="Write one combined result per format instead of one per file.")
@click.option("--merge-consecutive", "merge", is_flag=True,
              help="Join adjacent or overlapping windows of one species into one event (max confidence).")
@click.option("--channel", type=click.IntRange(min=1), default=None,
              help="Analyse only this channel (1-based); default mixes all channels down.")
@click.option("--fmin", type=click.FloatRange(min=0), default=None, help="Band limit: lowest frequency in Hz.")
@click.option("--fmax", type=click.FloatRange(min=0), default=None, help="Band limit: highest frequency in Hz.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=32, show_default=True,
              help="Windows scored per model call.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Files and 10-minute chunks of long files analysed in parallel (default: all cores). "
                   "Results do not depend on it.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads per worker inside the model (default: cores / workers).")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS|local",
              help="Spread chunks over a Dask cluster (scheduler address, or 'local' for a LocalCluster of "
                   "--workers processes); outputs are gathered here and identical to a local run.")
@click.option("--skip-existing", is_flag=True, help="Skip recordings whose outputs already exist (resume).")
@click.option("--plot", is_flag=True, help="Also write a PNG spectrogram with the detections drawn as boxes.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def analyze(paths, out_dir, model_path, overlap, min_conf, sensitivity, top_n, include, exclude, thresholds,
            rtypes, combine, merge, channel, fmin, fmax, batch_size, workers, threads, dask_address, skip_existing,
            plot, quiet):
    """Detect bird species in recordings (files or folders, searched recursively).

    Reads wav, flac, ogg and mp3 at any sample rate from 8 to 192 kHz, block by block (a 24 h
    file needs no more memory than a minute). Every detection's start and end follow the
    window rule: window k covers [k*hop, k*hop + window) samples at the model's rate; the
    last partial window is zero-padded and its end clipped to the file's end.
    Exit status: 0 when every file was analysed, 1 when any failed, 2 for bad options.
    """
    from . import analyze as an
    from .audio import find_audio_files

    workers = workers or os.cpu_count() or 1
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    model = load_model_or_fail(model_path, threads=threads, fast=True)
    check_overlap(model, overlap)
    if fmin is not None and fmax is not None and fmin >= fmax:
        fail(f"--fmin {fmin} must be below --fmax {fmax}")
    nyquist = model.meta.sample_rate / 2
    if fmin is not None and fmin >= nyquist:
        fail(f"--fmin {fmin:g}: at or above the highest frequency the model hears ({nyquist:g} Hz, half its "
             f"{model.meta.sample_rate} Hz sample rate)")
    dopts = detect_options(model, min_conf, sensitivity, top_n, include, exclude, thresholds)
    inputs = find_audio_files(list(paths))
    if not inputs:
        fail(f"no audio files (wav, flac, ogg, mp3) found in {', '.join(paths)}")
    opts = an.AnalyzeOptions(overlap_s=overlap, channel=channel - 1 if channel else None, fmin_hz=fmin,
                             fmax_hz=fmax, merge=merge, batch=batch_size, detect=dopts)
    try:
        summary = an.run(model, inputs, out_dir, tuple(dict.fromkeys(rtypes or ("table",))), opts,
                         combine=combine, skip_existing=skip_existing, plot=plot, progress_bar=not quiet,
                         report=lambda m: click.echo(m, err=True), workers=workers, dask=dask_address)
    except ValueError as e:  # --dask problems
        fail(str(e))
    click.echo(summary.line(), err=True)
    if summary.failed:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("model_path", required=False, type=click.Path())
@click.option("--labels", "show_labels", is_flag=True, help="List every species label.")
def info(model_path, show_labels):
    """Show a model's species, sample rate, window, size and metadata (default: shipped model).

    Reads only the file's metadata: no torch import for the shipped model (its ONNX export)."""
    model = load_model_or_fail(model_path, run=False, fast=True)
    m = model.meta
    from .runtime import file_size

    size = file_size(model.path)
    click.echo(f"file:           {model.path} ({model.kind}, {size / 1e6:.2f} MB)")
    click.echo(f"model version:  {m.model_version}")
    click.echo(f"licence:        {m.license}")
    click.echo(f"sample rate:    {m.sample_rate} Hz")
    click.echo(f"window:         {m.window_s} s ({m.window_samples} samples)")
    if model.net is not None:
        from .model import count_mflops, count_parameters

        click.echo(f"parameters:     {count_parameters(model.net):,}")
        click.echo(f"MFLOPs/window:  {count_mflops(model.net, m.window_samples):.1f}")
    else:
        for k in ("parameters", "mflops", "quantization", "format"):
            if k in m.extra:
                click.echo(f"{k + ':':15} {m.extra[k]}")
    fe = m.extra.get("frontend")
    if fe:
        click.echo(f"front end:      {fe.get('n_mels')} mel bins {fe.get('fmin_hz', 0):g}-{fe.get('fmax_hz', 0):g} Hz, "
                   f"FFT {fe.get('n_fft')}, hop {fe.get('hop')} samples")
    for k, name in (("teacher", "distilled from"), ("pretrained", "pretrained"), ("recording_score", "recording score")):
        if k in m.extra:
            click.echo(f"{name + ':':15} {m.extra[k]}")
    if "io" in m.extra:
        click.echo(f"input/output:   {m.extra['io']}")
    click.echo(f"species:        {len(m.labels)}")
    labels = m.labels if show_labels else m.labels[:5] + (["... (--labels lists all)"] if len(m.labels) > 5 else [])
    for lab in labels:
        click.echo(f"  {lab}")


@main.command(context_settings=CONTEXT)
@click.argument("data", type=click.Path(exists=True))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for model.pt, metrics.json and MODEL_CARD.md.")
@click.option("--steps", type=click.IntRange(min=1), default=3000, show_default=True, help="Training steps.")
@click.option("--batch-size", type=click.IntRange(2, 1024), default=64, show_default=True)
@click.option("--folds", type=click.IntRange(min=0), default=0, show_default=True,
              help="Cross-validate by recording with K folds before training the final model "
                   "(with --head-only: folds for calibration, at least 2).")
@click.option("--cv-only", is_flag=True, help="Only cross-validate; do not train the final model.")
@click.option("--cv-from", type=click.Path(exists=True, dir_okay=False), default=None, metavar="METRICS_JSON",
              help="Train only the final model, calibrated as the finished cross-validation in this metrics.json "
                   "(from --cv-only with the same data and recipe) chose.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--teacher", type=click.Choice(["birdnet"]), default=None,
              help="Distil a teacher: BirdNET V2.4's probabilities, logits and embeddings guide the small model "
                   "(pip install 'birdsound[distill]'; outputs cached in ~/.cache/birdsound/teacher).")
@click.option("--negatives", multiple=True, type=click.Path(exists=True),
              help="Folder or file of audio without any of the species (speech, noise, other birds); repeatable.")
@click.option("--val-negatives", multiple=True, type=click.Path(exists=True),
              help="Bird-free audio for the cross-validated false-detection rate; repeatable.")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Folder for the teacher's cached outputs.")
@click.option("--arch", type=click.Choice(["v1", "mn"]), default="v1", show_default=True,
              help="Backbone: v1 (birdsound's MobileNetV3-small style CNN) or mn (EfficientAT's MobileNetV3, "
                   "width 0.4, first 12 blocks).")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --arch mn: start from EfficientAT mn04 AudioSet weights (a state dict file).")
@click.option("--lr", type=click.FloatRange(min=1e-6), default=3e-3, show_default=True, help="Peak learning rate.")
@click.option("--recipe", "recipe_json", default=None, metavar="JSON",
              help='Advanced: training settings as JSON, e.g. \'{"emb_weight": 1.0, "sampler": {"eq_p": 0.3}}\' '
                   "(fields of birdsound.train.TrainConfig and SamplerConfig).")
@click.option("--base", type=click.Path(dir_okay=False), help="Base model whose frozen backbone is reused.")
@click.option("--head-only", is_flag=True, help="With --base: train only a new classification head (fast).")
@click.option("--model-version", default=None, help="Version string stored in the model.")
@click.option("--license", "license_", default="same terms as the training recordings", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Fit the cross-validation folds and the final model side by side in this many processes "
                   "of one thread each (a small model trains faster so than in one process on many threads).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run in OUTPUT (same command otherwise) from its last evaluation step: "
                   "every fit saves its state in OUTPUT/training_state/ (removed when the run is done).")
def train(data, out_dir, steps, batch_size, folds, cv_only, cv_from, seed, teacher, negatives, val_negatives, teacher_cache,
          arch, pretrained, lr, recipe_json, base, head_only, model_version, license_, threads, jobs, resume):
    """Train a model on DATA: a folder with one subfolder per species
    ("Scientific name_Common name/", BirdNET-Analyzer's layout; an optional "noise/" folder
    holds recordings without birds) or a manifest CSV with columns path,species.
    Writes model.pt, metrics.json and MODEL_CARD.md into the output folder."""
    import torch

    from . import headonly
    from . import train as tr
    from .metadata import ModelError

    if threads:
        torch.set_num_threads(threads)
    if head_only and not base:
        fail("--head-only needs --base MODEL")
    if head_only and cv_from:
        fail("--cv-from trains a whole final model; it does not combine with --head-only")
    if head_only and jobs > 1:
        fail("--jobs fits whole models side by side; --head-only trains one head in seconds: drop --jobs")
    if head_only and resume:
        fail("--resume continues a whole-model run; --head-only trains one head in seconds: drop --resume")
    if teacher and head_only:
        fail("--teacher trains the whole model; it does not combine with --head-only")
    if pretrained and arch != "mn":
        fail("--pretrained needs --arch mn (EfficientAT mn04 weights)")
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    try:
        if head_only:
            try:
                report = headonly.train_head(data, base, out_dir, seed=seed, folds=folds,
                                             model_version=model_version, license=license_, log=log)
            except ModelError as e:
                fail(f"--base {e}")
        else:
            mn = arch == "mn"
            cfg = tr.TrainConfig(steps=steps, batch_size=batch_size, seed=seed, teacher=teacher, lr=lr,
                                 backbone={"type": "mn", "depth": 12} if mn else None,
                                 frontend={"scale": 0.2} if mn else None, pretrained=pretrained)
            if recipe_json:
                cfg = tr.apply_recipe(cfg, recipe_json)
            report = tr.train(data, out_dir, cfg, folds=folds, cv_only=cv_only, negatives=list(negatives),
                              val_negatives=list(val_negatives), model_version=model_version, license=license_,
                              cache_dir=teacher_cache, log=log, jobs=jobs, cv_from=cv_from, resume=resume)
    except ValueError as e:
        fail(str(e))
    except ImportError as e:
        fail(str(e))
    cv = report.get("cross_validation")
    if cv:
        click.echo("cross-validation (by recording): " + ", ".join(
            f"{k} {cv['mean'][k]:.3f}" for k in ("recording_top1", "recording_top5", "window_macro_ap",
                                                  "false_detections_per_hour") if k in cv["mean"]))
    click.echo(f"wrote {out_dir} in {report['wall_s']:.0f} s")


@main.command(context_settings=CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder for the ensemble's model.pt, metrics.json and cv_logits.npz.")
@click.option("--model-version", required=True, help="Version string stored in the model file.")
@click.option("--license", "license_", default=None, help="Licence of the weights (default: the runs' own, if one).")
@click.option("--cv-only", is_flag=True,
              help="Only score and calibrate the ensemble (metrics.json, cv_logits.npz; no model.pt): RUNS may be "
                   "`train --cv-only` runs without a final model.")
def ensemble(runs, out_dir, model_version, license_, cv_only):
    """Average the cross-validated training RUNS (`train --folds K` folders of the same data and seed) into
    one model: the mean of their logits, scored and calibrated on their held-out logits (no audio)."""
    from . import ensemble as en
    from .metadata import ModelError

    try:
        rep = en.ensemble(list(runs), out_dir, model_version, license_, log=click.echo, cv_only=cv_only)
    except (en.EnsembleError, ModelError) as e:
        fail(str(e))
    m = rep["cross_validation"]["mean"]
    click.echo(f"recording top-1 {m['recording_top1']:.3f}, top-5 {m['recording_top5']:.3f}, window macro AP "
               f"{m['window_macro_ap']:.3f}; wrote {os.path.join(out_dir, 'metrics.json' if cv_only else 'model.pt')}")


@main.command(context_settings=CONTEXT)
@click.argument("model_path", type=click.Path())
@click.argument("data", type=click.Path(exists=True))
@click.option("-o", "--output", "out_dir", default="evaluation", show_default=True, type=click.Path(file_okay=False))
@click.option("--annotations", type=click.Path(exists=True),
              help="Folder of Raven selection tables (<audio stem>*.txt) for event scoring in time.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=DEFAULT_MIN_CONF, show_default=True)
@click.option("--overlap", type=float, default=1.5, show_default=True)
@click.option("--tolerance", type=float, default=1.5, show_default=True, help="Onset/offset tolerance (s) for events.")
@click.option("--negatives", multiple=True, type=click.Path(exists=True),
              help="Bird-free audio (folder or file, repeatable) for the false-detections-per-hour measure "
                   "(synthesized noise is always included).")
@click.option("--teacher-cache", type=click.Path(file_okay=False), default=None,
              help="Also count false detections in DATA's windows where BirdNET hears none of the species "
                   "(distill extra; BirdNET's outputs are cached in this folder).")
def evaluate(model_path, data, out_dir, annotations, threshold, overlap, tolerance, negatives, teacher_cache):
    """Evaluate MODEL on DATA (species folders or manifest): per-class AP, macro AP, ROC-AUC,
    recording top-1/top-5, precision/recall/F1, confusion matrix and PR curves (JSON + PNG)."""
    from . import evaluate as ev

    model = load_model_or_fail(model_path)
    check_overlap(model, overlap)
    try:
        rep = ev.evaluate(model, data, out_dir, threshold=threshold, overlap_s=overlap,
                          annotations=annotations, tolerance_s=tolerance, negatives=list(negatives),
                          teacher_cache=teacher_cache)
    except ValueError as e:
        fail(str(e))
    s = rep["summary"]
    click.echo(", ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, float)))
    fd = rep["false_detections"]
    lo, hi = fd["per_hour_95ci"]
    click.echo(f"false detections: {fd['detections']} in {fd['hours']:.2f} h of bird-free audio, "
               f"{fd['per_hour']:.1f} per hour (95 % interval {lo:.1f}-{hi:.1f})")
    click.echo(f"report: {os.path.join(out_dir, 'report.json')}")


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--output", "out_path", required=True, type=click.Path(dir_okay=False), help="Output .npz file.")
@click.option("-m", "--model", "model_path", type=click.Path(dir_okay=False))
@click.option("--overlap", type=float, default=0.0, show_default=True)
def embed(paths, out_path, model_path, overlap):
    """Write per-window embeddings of recordings to an .npz (files, starts, ends, embeddings)."""
    from . import evaluate as ev

    model = load_model_or_fail(model_path)
    if model.net is None:
        fail(f"--model {model.path}: embeddings need a birdsound checkpoint, not an exported file")
    check_overlap(model, overlap)
    from .audio import find_audio_files

    n, errors = ev.write_embeddings(model, [p for p, _ in find_audio_files(list(paths))], out_path, overlap)
    for e in errors:
        click.echo(f"error: {e}", err=True)
    click.echo(f"wrote {n} embeddings to {out_path}")
    if errors:
        sys.exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("model_path", required=False, type=click.Path())
@click.option("-o", "--output", "out", required=True, type=click.Path(),
              help="Output file (.pt torchscript, .ptl lite, .onnx, .pte executorch, .mlpackage coreml).")
@click.option("--format", "fmt", type=click.Choice(["torchscript", "lite", "onnx", "executorch", "coreml"]),
              default="torchscript", show_default=True,
              help="torchscript: frozen TorchScript .pt; lite: PyTorch Mobile lite-interpreter .ptl; "
                   "onnx: ONNX opset 18 for onnxruntime; executorch: ExecuTorch .pte with the "
                   "XNNPACK delegate, batch 1-8 (executorch extra); coreml: Core ML .mlpackage, fp32, "
                   "batch 1 (coreml extra).")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "int8"]), default="none", show_default=True,
              help="int8: static post-training quantization calibrated on real audio; dynamic: int8 Linear layers.")
@click.option("--calibration", "calib", multiple=True, type=click.Path(exists=True),
              help="Audio files/folders or a training manifest CSV for calibration and the parity check "
                   "(default: the shipped model's training manifest).")
@click.option("--windows", "n_windows", type=click.IntRange(8, 4096), default=512, show_default=True,
              help="Real audio windows used for calibration and parity.")
def export(model_path, out, fmt, quantize, calib, n_windows):
    """Export MODEL (default: shipped model) as a self-contained TorchScript file for phone apps.

    \b
    Signature: forward(pcm: float32 [batch, window_samples]) -> float32 [batch, n_labels]
    raw mono PCM in [-1, 1] at the model's sample rate in; sigmoid probabilities out.
    The mel front end is inside; metadata.json (labels, sample_rate, window_s, model_version,
    license, io) travels in the file's extra files: 'birdsound info FILE' shows it.
    The export is reloaded and compared with the Python model on real audio; it is refused
    (exit 1, no file) when fp32 max |diff| > 1e-4, or when a quantized model's detections at the default
    min-conf differ: top-1 agreement under 95% on the windows where the float model detects a species, or
    under 90% of the detections either reports reported by both.
    optimize_for_mobile is not used (no XNNPACK in these wheels); the model is frozen instead.
    """
    from . import export as ex
    from .metadata import ModelError
    from .model import load_checkpoint
    from .runtime import DEFAULT_MODEL_PATH

    try:
        ex.check_format(fmt, quantize)
    except ex.ExportError as e:
        fail(str(e), code=1)
    try:
        net, meta = load_checkpoint(model_path or DEFAULT_MODEL_PATH)
    except ModelError as e:
        fail(f"MODEL {e} (export needs a birdsound checkpoint)")
    if os.path.isdir(out) and not (fmt == "coreml" and out.endswith(".mlpackage")):
        fail(f"-o {out}: is a directory")
    sources = list(calib) or [DEFAULT_CALIBRATION]
    kind = "real"
    try:
        windows, labels = ex.calibration_windows(sources, meta.sample_rate, meta.window_samples, n_windows)
    except (ex.ExportError, ValueError) as e:
        if calib or quantize == "int8":  # int8 needs real audio to calibrate on
            hint = "" if calib else " (int8 calibrates on real audio: pass --calibration AUDIO_FOLDER)"
            fail(f"{e}{hint}")
        windows = ex.synthetic_windows(n_windows, meta.sample_rate, meta.window_samples)
        labels = [""] * len(windows)
        kind = "synthesized"
        click.echo("note: no training recordings here: parity is checked on synthesized windows "
                   "(--calibration AUDIO_FOLDER checks on real audio)", err=True)
    try:
        rep = ex.export(net, meta, out, fmt, quantize, windows, labels)
    except ex.ExportError as e:
        fail(str(e), code=1)
    except ValueError as e:
        fail(str(e))
    click.echo(f"wrote {out} ({rep['size_bytes'] / 1e6:.2f} MB, {fmt}, quantize {quantize})")
    click.echo(f"parity on {rep['windows']} {kind} windows: max |diff| {rep['max_abs_diff']:.2e}, "
               f"top-1 agreement {rep['top1_agreement']:.3f}" + (f" ({rep['note']})" if rep["note"] else ""))
    if "detected_windows" in rep:
        click.echo(f"detections at min-conf {DEFAULT_MIN_CONF}: {rep['detected_windows']} windows with one, top-1 "
                   f"agreement there {rep['top1_agreement_detected']:.3f}, detections agreeing {rep['detection_agreement']:.3f}")
    if "macro_ap_drop" in rep:
        click.echo(f"macro AP on labelled windows: fp32 {rep['macro_ap_fp32']:.3f}, exported "
                   f"{rep['macro_ap_exported']:.3f} (drop {rep['macro_ap_drop']:+.3f})")


@main.command(context_settings=CONTEXT)
def devices():
    """List audio input devices (index, name, channels, default sample rate)."""
    from .listen import LiveError, list_devices

    try:
        devs = list_devices()
    except LiveError as e:
        fail(str(e))
    if not devs:
        fail("no audio input device found (no sound card or microphone connected)", code=1)
    for d in devs:
        click.echo(f"{d['index']:3d}  {d['name']}  ({d['channels']} ch, {d['default_samplerate']:.0f} Hz)")


@main.command(context_settings=CONTEXT)
@click.option("--device", default=None, help="Input device name (substring) or index (see 'birdsound devices').")
@detection_flags
@click.option("--duration", type=click.FloatRange(min=0.1), default=None, help="Stop after this many seconds of audio.")
@click.option("--min-hits", type=click.IntRange(min=1), default=1, show_default=True,
              help="Report a species only after N windows above threshold ...")
@click.option("--within", type=click.FloatRange(min=0), default=15.0, show_default=True, help="... within S seconds.")
@click.option("--cooldown", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds before the same species is reported again.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Append detections to this SQLite database.")
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False), help="Save a WAV clip of each detection here.")
@click.option("--pre-roll", type=click.FloatRange(min=0), default=1.0, show_default=True)
@click.option("--post-roll", type=click.FloatRange(min=0), default=1.0, show_default=True)
def listen(device, model_path, overlap, min_conf, sensitivity, top_n, include, exclude, thresholds, duration,
           min_hits, within, cooldown, log_path, clips_dir, pre_roll, post_roll):
    """Listen to a microphone and print species as they sing (same windows, model and rules as analyze).

    Each line: local wall-clock time, stream offset (s), species, confidence. Ctrl-C or SIGTERM stops
    cleanly: the current window is scored, the log and clips are flushed, a summary is printed.
    """
    from .listen import LiveError, LiveOptions
    from .listen import listen as run_listen

    # one thread: one window per hop is light, and idle OpenMP threads would spin (~10 % of a core)
    model = load_model_or_fail(model_path, threads=1, fast=True)
    check_overlap(model, overlap)
    dopts = detect_options(model, min_conf, sensitivity, top_n, include, exclude, thresholds)
    live = LiveOptions(overlap, duration, min_hits, within, cooldown, log_path, clips_dir, pre_roll, post_roll)
    try:
        s = run_listen(model, dopts, device, live, echo=lambda m: click.echo(m),
                       echo_err=lambda m: click.echo(m, err=True))
    except LiveError as e:
        fail(str(e))
    click.echo(s.line(), err=True)
    if s.error:
        fail(s.error, code=1)


@main.command(context_settings=CONTEXT)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or --insecure-no-auth).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@detection_flags
@click.option("--device", default=None, help="Microphone for the live dashboard (name substring or index; "
                                              "'default' for the default input). Without it: the API only.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="SQLite detection log (history, tally).")
@click.option("--clips", "clips_dir", type=click.Path(file_okay=False), help="Save a WAV clip of each live detection.")
@click.option("--min-hits", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--within", type=click.FloatRange(min=0), default=15.0, show_default=True)
@click.option("--cooldown", type=click.FloatRange(min=0), default=10.0, show_default=True)
@click.option("--token", envvar="BIRDSOUND_TOKEN", default=None,
              help="Bearer token every request must carry (or env BIRDSOUND_TOKEN).")
@click.option("--insecure-no-auth", is_flag=True, help="Serve a non-loopback address without a token.")
@click.option("--max-mb", type=click.FloatRange(min=0.01), default=200.0, show_default=True, help="Largest upload.")
@click.option("--max-seconds", type=click.FloatRange(min=1), default=3600.0, show_default=True,
              help="Longest audio per request.")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Analysis threads (default: all cores).")
@click.option("--max-inflight", type=click.IntRange(min=1), default=None,
              help="Requests analysed or waiting at once; more get 503 with Retry-After (default: 4 x workers).")
def serve(host, port, model_path, overlap, min_conf, sensitivity, top_n, include, exclude, thresholds, device,
          log_path, clips_dir, min_hits, within, cooldown, token, insecure_no_auth, max_mb, max_seconds, workers,
          max_inflight):
    """Serve an HTTP analysis API (POST /v1/analyze) and, with --device, a live dashboard at /.

    \b
    curl --data-binary @recording.wav 'http://127.0.0.1:8000/v1/analyze?min_conf=0.3'
    The answer is the JSON of 'birdsound analyze --rtype json'. Docs: /docs and /openapi.json.
    """
    try:
        from . import serve as sv
    except ImportError as e:
        fail(f"serve needs the serve extra: pip install 'birdsound[serve]' ({e})", code=1)
    import importlib.util

    for mod in ("fastapi", "uvicorn", "multipart"):
        if importlib.util.find_spec(mod) is None:
            fail("serve needs the serve extra: pip install 'birdsound[serve]'", code=1)
    workers = workers or os.cpu_count() or 1
    opts = sv.ServeOptions(host=host, port=port, token=token, insecure_no_auth=insecure_no_auth, max_mb=max_mb,
                           max_s=max_seconds, workers=workers, max_inflight=max_inflight or 4 * workers,
                           device=device,
                           log_path=log_path, clips_dir=clips_dir, live_overlap_s=overlap, min_hits=min_hits,
                           within_s=within, cooldown_s=cooldown)
    try:
        sv.check_bind(opts)
    except sv.ServeError as e:
        fail(e.message)
    model = load_model_or_fail(model_path, threads=1, fast=True)
    check_overlap(model, overlap)
    dopts = detect_options(model, min_conf, sensitivity, top_n, include, exclude, thresholds)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{port}/"
    click.echo(f"serving {model.meta.model_version} on {where} (API docs: {where}docs"
               + (f"; live dashboard of '{device}'" if device is not None else "") + "); Ctrl-C stops", err=True)
    sv.serve(model, opts, dopts)


DEFAULT_CALIBRATION = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "datasets",
                                   "xc_train_manifest.csv")


if __name__ == "__main__":
    main()
