"""card.json -> card.md: the model card a person reads. Every number comes from card.json, which the
export and evaluation commands write; nothing here is typed in by hand."""

from __future__ import annotations

from typing import Any


def _f(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"


def _ci(metrics: dict[str, Any]) -> str:
    ci = metrics.get("auroc_ci95")
    return f"{_f(metrics.get('auroc'))} [{_f(ci[0])}, {_f(ci[1])}]" if ci else _f(metrics.get("auroc"))


def _row(name: str, m: dict[str, Any]) -> str:
    return (
        f"| {name} | {m['n']} | {m['positives']} | {_ci(m)} | {_f(m['sensitivity'])} | {_f(m['specificity'])} | "
        f"{_f(m['ppv'])} | {_f(m['npv'])} | {_f(m['f1'])} | {_f(m['ece'])} |"
    )


def _metrics_section(split: str, evaluation: dict[str, Any]) -> list[str]:
    lines = [
        f"### {split} split",
        "",
        f"Reproduce: `{evaluation['command']}`",
        "",
        "| set | n | covid | AUROC [95% CI] | sensitivity | specificity | PPV | NPV | F1 | ECE |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
        _row("overall", evaluation["overall"]),
    ]
    for name, m in evaluation.get("within_source", {}).items():
        lines.append(_row(f"**within {name}** (covid vs its own non-covid)", m))
    for name, m in evaluation.get("per_source", {}).items():
        lines.append(_row(f"source `{name}`", m))
    matrix = evaluation["overall"]["confusion_matrix"]
    gap = evaluation.get("origin_gap") or {}
    if gap.get("value") is not None:
        ci = gap.get("ci95")
        lines += [
            "",
            f"**Origin gap** {_f(gap['value'])}"
            + (f" [{_f(ci[0])}, {_f(ci[1])}]" if ci else "")
            + f": the chance that one of the {gap['covid_origin_negatives']} non-COVID images from the COVID "
            f"source scores above one of the {gap['other_negatives']} non-COVID images of the same label "
            "(normal or pneumonia) from elsewhere. 0.5 would mean the score carries no trace of where a negative "
            "came from; 1.0 is the pure source shortcut.",
        ]
    if evaluation["overall"].get("auroc_ci_resamples") == "patients":
        lines += ["", "Confidence intervals: 2,000 bootstrap resamples of patients within each class."]
    lines += [
        "",
        f"Confusion matrix at threshold {_f(evaluation['threshold'], 4)}: TN {matrix['tn']}, FP {matrix['fp']}, "
        f"FN {matrix['fn']}, TP {matrix['tp']}. Unreadable files: {evaluation.get('errors', 0)}.",
        "",
    ]
    domain = evaluation.get("domain")
    if domain:
        verdicts = domain["verdicts"]
        lines += [
            f"Input-domain check on these films: {verdicts['in']} in, {verdicts['corrected']} corrected, "
            f"{verdicts['out']} refused"
            + (
                ": " + "; ".join(f"`{d['file']}` {d['verdict']} ({d['reasons']})" for d in domain["not_in"])
                if domain["not_in"]
                else ""
            )
            + ". Every film is scored in the table above all the same.",
            "",
        ]
    for image in ("roc.png", "confusion_matrix.png", "reliability.png", "cam_grid.png"):
        lines.append(f"![{split} {image}]({split}_{image})")
    lines.append("")
    return lines


def render_card(card: dict[str, Any]) -> str:
    training = card["training"]
    spec = card["preprocessing"]
    arch = card["architecture"]
    counts = training["split_counts"]
    lines = [
        f"# Model card: {card['name']} v{card['version']}",
        "",
        "> **RESEARCH USE ONLY. Not for diagnosis, triage or any clinical decision.** This model has not been",
        "> validated clinically. A COVID-19 chest X-ray classifier trained on public data like this one is known",
        "> to learn where an image came from rather than the disease (DeGrave et al., Nat Mach Intell 2021).",
        "",
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "Out of scope: clinical use of any kind; children (no paediatric images in training); lateral views;",
        "CT; images that are not chest radiographs.",
        "",
        "## Model",
        "",
        f"- Architecture: `{arch['name']}` ({arch['description']}), {arch['parameters']:,} parameters.",
        f"- Files: `model.onnx` (sha256 `{card['files']['model.onnx']}`), opset {card['opset']}"
        + (
            f"; lung segmenter `{card['segmenter']}` (sha256 `{card['files'][card['segmenter']]}`)."
            if card.get("segmenter")
            else "."
        ),
        f"- Input `image` (N, {spec['input_size']}, {spec['input_size']}, 1) float32 in [0, 1]; outputs "
        + ", ".join(f"`{o}`" for o in card["outputs"])
        + ". `cam` is the class activation map of `covid` in logit units.",
        f"- Labels {card['labels']}, positive label `{card['positive_label']}`.",
        f"- Operating threshold {_f(card['threshold'], 4)}: {card['threshold_rule']}.",
        f"- Export parity (ONNX vs Keras): max abs difference {training_parity(card)} on {card['export']['parity_images']} real images.",
        "",
        "## Preprocessing contract (runs in the service, `cxr predict`, evaluation and training alike)",
        "",
        "1. Decode to 8-bit grayscale (DICOM: Modality LUT, VOI LUT/window, MONOCHROME1 inversion) and bring the",
        "   shorter side to 320 px with INTER_AREA (how the training PNGs were made).",
        f"2. Trim uniform border rows/columns (std < {spec['border_std']}, at most {int(spec['border_max_fraction'] * 100)}% per side).",
        f"3. Lung crop: {'on' if spec['lung_crop'] else 'off'}. A small U-Net ({spec['segmenter_size']} px) segments the lungs;"
        f" the box around the two largest components, widened by {int(spec['lung_margin'] * 100)}%, is the crop. If the mask covers"
        f" less than {int(spec['lung_min_fraction'] * 100)}% of the image the whole trimmed image is used (`lung_crop: fallback`).",
        f"4. Resize the crop to {spec['input_size']}x{spec['input_size']} (INTER_AREA), CLAHE (clip {spec['clahe_clip']},"
        f" {spec['clahe_tiles']}x{spec['clahe_tiles']} tiles), scale to [0, 1].",
        "",
        *_segmenter_lines(card),
        "## Training data",
        "",
        "`shared/data/cxr` (see its README): 1,414 frontal chest X-rays. covid 330 (all from the ieee8023",
        "covid-chestxray-dataset, mostly figures from papers and teaching sites), normal 510 and pneumonia 574",
        "(97% and 87% from NIH ChestX-ray8 via the DarkCovidNet repository; ieee8023 adds 11 normals and 74",
        "non-COVID pneumonias). Licences are mixed (many CC BY-NC-SA / CC BY-NC-ND, 200 images without a stated",
        "licence): research and internal evaluation only.",
        "",
        f"Patient-disjoint, stratified, seeded split: train {counts['train']}, validation {counts['val']}, test {counts['test']}"
        " images (`split.csv` beside this card). The lung segmenter was trained on the lung masks of training-split",
        "images only. Training manifest sha256 `" + training["manifest_sha256"] + "`.",
        "",
        f"Command: `{training.get('command') or 'see train.json arguments'}`",
        *_member_lines(training.get("members") or []),
        f"Training time on a 2-core CPU: {training['train_seconds']:.0f} s ({training['epochs_run']} epochs,"
        f" best epoch {training['best_epoch']['epoch']}); lung crop outcome by origin: {training['lung_crop']}.",
        "Model selection and threshold used the validation split only; the test split was evaluated once.",
        "",
        "## Results",
        "",
    ]
    evaluations = card.get("evaluation", {})
    if not evaluations:
        lines.append("Not evaluated yet: run `cxr evaluate --split test --update-card`.")
    for split, evaluation in evaluations.items():
        lines += _metrics_section(split, evaluation)
    for variant, result in card.get("variants", {}).items():
        lines += [
            f"## Variant: {variant}",
            "",
            f"{'Kept' if result['kept'] else 'Not kept'}: {result['reason']}. Validation AUROC fp32"
            f" {_f(result['val_auroc']['fp32'], 4)}, {variant} {_f(result['val_auroc'][variant], 4)}; speed (images/s,"
            f" 2 threads): {result['images_per_second_2_threads']}. Calibrated on {result['calibration']}.",
            "",
        ]
    lines += _calibration_lines(card)
    lines += _domain_lines(card)
    lines += _shortcut_lines(card)
    lines += [
        "## Known shortcut risks and limits",
        "",
        "- **Source confounding.** Every COVID image comes from one collection of paper figures; nearly every",
        "  negative from one hospital. High overall AUROC on this data does not show the model sees COVID. The",
        "  within-source AUROC (ieee8023 covid vs ieee8023 non-COVID pneumonia and normals) is the figure the",
        "  source shortcut cannot explain; its CI is wide because there are few ieee8023 negatives.",
        "- **Ward films.** The COVID films are mostly of very ill patients (supine AP portable, tubes, lines, ECG",
        "  leads, burned-in text), the negatives mostly outpatient films: a device is then evidence of COVID to a",
        "  classifier. Training turns films of every label into ward films with the same probability (`--icu`,",
        "  export/icu.py) and, where `--invariance` is on, penalises any difference between a film's answer and",
        "  its answer with devices painted on (export/invariance.py); the shortcut check above measures, with",
        "  drawings unlike the training ones, how",
        "  far devices and text still move the answer. Painted devices are not real ones: the figure bounds",
        "  what the renderer can imitate, not every device a ward film carries.",
        "- Mitigations used: lung crop, CLAHE, border trimming, augmentation of JPEG quality, blur, resolution,",
        "  contrast and field of view, ward-film rendering on every label, a fixed weight share for ieee8023",
        "  negatives, selection on within-source AUROC. The CAM grid shows where the model looks per source and class.",
        "- **Not validated on:** other hospitals' films (an external test set is kept outside this project),",
        "  children, portable ICU films beyond those in ieee8023, DICOM from real PACS at scale, lateral views,",
        '  other diseases with similar patterns (the negatives include only NIH "pneumonia" labels mined by NLP',
        "  and a few ieee8023 pneumonias).",
        "- Label noise: NIH labels were mined from reports; ieee8023 COVID images span all severities.",
        "",
    ]
    if card.get("notes"):
        lines += ["## Observations (by the people who trained it)", ""]
        lines += [f"- {note}" for note in card["notes"]]
        lines.append("")
    return "\n".join(lines)


def _value_ci(result: dict[str, Any], key: str, percent: bool) -> str:
    value, ci = result[key]["value"], result[key]["ci"]
    if value is None:
        return "n/a"

    def show(v: float) -> str:
        return f"{v:.1%}" if percent else f"{v:+.3f}"

    return show(value) + (f" [{show(ci[0])}, {show(ci[1])}]" if ci else "")


def _shortcut_lines(card: dict[str, Any]) -> list[str]:
    report = card.get("shortcuts")
    if not report:
        return []
    lines = [
        "## Shortcut check: devices and burned-in text (counterfactual)",
        "",
        f"Each of the {report['films']} {report['split']}-split films is classified as it is and again with,"
        f" painted on it {report['copies']} times by the ICU renderer's `{report['style']}` style (export/icu.py:"
        " other curves, widths, positions, shapes and fonts than training draws with), tubes, lines, ECG",
        "leads, pacemaker, port, clips and sternal wires (`devices`), burned-in words and markers (`text`), or"
        " both with tilt inside collimation borders and portable exposure (`ward film`, which changes the image"
        " itself: not an acceptance figure). Every copy goes through the service's path, input check included."
        " A flip is a copy whose label moved the wrong way, out of the copies whose clean film had the other"
        " label; 95 % CIs resample patients.",
        "",
        f"Reproduce: `{report['command']}`",
        "",
        "| painted | label | copies | median change of p(covid) | flipped | refused |",
        "|---|---|---:|---|---|---|",
    ]
    for variant, groups in report["variants"].items():
        for group, r in groups.items():
            if not r.get("copies"):
                continue
            lines.append(
                f"| {variant} | {group} | {r['copies']} | {_value_ci(r, 'median_change', False)} | "
                f"{_value_ci(r, 'flipped_of_eligible', True)} {r['direction']} (of {r['eligible']}) | "
                f"{_value_ci(r, 'refused', True)} |"
            )
    failures = report.get("failures") or []
    lines += [
        "",
        "Rule (at most 5 % flip, median change of p(covid) at most 0.02 on non-COVID films, devices and text): "
        + ("holds." if not failures else "**fails**: " + "; ".join(failures) + "."),
    ]
    before = report.get("before")
    if before:
        lines += ["", f"Before ({before['model']}): " + "; ".join(before["summary"]) + "."]
    return [*lines, ""]


def _calibration_lines(card: dict[str, Any]) -> list[str]:
    calibration = card.get("calibration")
    lines = ["## Calibration", ""]
    if not calibration:
        return [
            *lines,
            "ECE (10 equal-width bins) is in the tables above. Probabilities come from a network trained with",
            "re-weighted classes and sources, so they are not calibrated to any clinical prevalence.",
            "",
        ]
    nll, ece = calibration["val_nll"], calibration["val_ece"]
    before = calibration.get("test_ece_before")
    return [
        *lines,
        f"The positive logit z is mapped to `sigmoid(z * {calibration['scale']:.4f} + {calibration['shift']:.4f})` inside"
        f" `model.onnx` ({calibration['method']} scaling; temperature alone would be T = {calibration['temperature']:.3f}),"
        " so the service, `cxr predict`, `cxr evaluate`, the PACS pass and Triton all return the same calibrated",
        f"probability. Fitted by negative log-likelihood on the {calibration['fitted_on']}: validation NLL"
        f" {_f(nll['uncalibrated'])} uncalibrated, {_f(nll['temperature'])} temperature, {_f(nll['platt'])} Platt"
        " (Platt is used only if at least 0.01 lower than temperature, a rule fixed before fitting); validation ECE"
        f" {_f(ece['uncalibrated'])} -> {_f(ece['calibrated'])}. The scale is positive, so the ranking and AUROC are"
        f" unchanged. The threshold was re-derived on the calibrated validation scores: {_f(card['threshold'], 4)}"
        f" (was {_f(calibration['threshold_before'], 4)} before calibration)."
        + (
            f" Test ECE before calibration: {_f(before)}; after: the ECE column of the test table above."
            if before
            else ""
        ),
        "",
        f"Reproduce: `{calibration['command']}`, then `cxr evaluate ... --split test --update-card`. The reliability",
        "diagram of the test split is above (`test_reliability.png`). The calibration describes this data set's",
        "mix of sources and prevalence, not any clinical population.",
        "",
    ]


def _pct(value: Any) -> str:
    return f"{100 * value:.1f} %" if isinstance(value, int | float) else "n/a"


def _domain_lines(card: dict[str, Any]) -> list[str]:
    domain = card.get("domain")
    if not domain:
        return []
    thresholds = domain["thresholds"]
    training = domain.get("training", {})
    lines = [
        "## Input-domain check (what the model was not made for)",
        "",
        "Every image, in every path (service, `cxr predict`, `cxr evaluate`, PACS), is checked before it is",
        "classified (`service/imaging/input_check.py`): its size (shorter side >= "
        f"{thresholds['min_side']} px), its colour (at most {_pct(thresholds['max_colour_fraction'])} coloured pixels),",
        f"the view model `{domain['file']}` (sha256 `{card['files'].get(domain['file'], '?')}`, a small CNN on the",
        f"border-trimmed image at {domain['input_size']} px: upright / turned 90, 180, 270 / inverted / mirrored / not a",
        f"chest radiograph, p(not) > {thresholds['max_not_radiograph']} refuses), the Mahalanobis distance of its features",
        f"to the training films (> {thresholds['max_distance']} refuses), and the lung segmenter's mask (a lung field of",
        f"at least {_pct(thresholds['min_lung_area'])} of the image; a second one, if as large, beside it: one whited-out",
        "hemithorax is a real film). A film the view model finds turned or inverted with p >="
        f" {thresholds['correct_min']} is turned back / inverted (exact, lossless), must then look upright with the same",
        "confidence, and is classified, flagged `corrected`. A film found mirrored left-right with that confidence is",
        "classified as it is with a warning (flag `domain`): the classifier's score moves when a film is mirrored (see",
        "the table below), but the mirror call cannot be checked like a turn and is not sure enough to change pixels",
        "on (on validation, ~1 % of films the usual way round were called mirrored at 0.9). Anything else that fails is",
        "refused (HTTP 422",
        "`not-a-chest-radiograph`). Corrected rather than refused because the correction is exact and checked, and",
        "a film loaded the wrong way round (or a MONOCHROME1 film shown uninverted) is still a chest film that a",
        "user wants read; the flag says what was done.",
        "",
        "Fitted on: the training split's own films, turned, inverted and mirrored (labels for free), and rendered",
        "non-radiographs: "
        + ", ".join(training.get("fit_negatives", {}).get("kinds", []))
        + ". Photos come from",
        "scikit-image's bundled `skimage.data` images (no download). Thresholds were chosen on the validation split",
        "and validation-seed negatives by rules fixed in `export/viewmodel.py`; the test split and the held-out",
        "kinds below were not used to fit or choose anything.",
        "",
    ]
    if training.get("command"):
        lines += [
            f"Train: `{training['command']}` ({training.get('train_seconds', 0):.0f} s on the 2-core CPU).",
            "",
        ]
    evaluation = domain.get("evaluation")
    if not evaluation:
        return [*lines, "Not measured yet: run `cxr evaluate-domain --update-card`.", ""]
    lines += [
        f"Measured with `{evaluation['command']}`.",
        "",
        "Genuine frontal films (should be in):",
        "",
        "| set | n | refused | corrected | in | warned: may be mirrored | not in, by reason |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in evaluation["genuine"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted((t.get("caught_by") or {}).items())) or "-"
        lines.append(
            f"| {name} | {t['n']} | {t['out']} ({_pct(t['refused_rate'])}) | {t['corrected']} | {t['in']} | "
            f"{t.get('warned_mirrored', 0)} | {reasons} |"
        )
    refused = evaluation.get("refused_genuine_files") or []
    shown = 10  # per set: the hard genuine set alone could list dozens
    for name in dict.fromkeys(r["set"] for r in refused):
        files = [r for r in refused if r["set"] == name]
        more = f"; and {len(files) - shown} more (domain.json)" if len(files) > shown else ""
        lines += [
            "",
            f"{name}, films not passed as in: "
            + "; ".join(f"`{r['file']}` {r['verdict']} ({r['reasons']})" for r in files[:shown])
            + more
            + ".",
        ]
    lines += [
        "",
        "The test split's films made wrong on purpose:",
        "",
        "| copy | n | refused | corrected (right) | passed as in | warned: may be mirrored | mean abs change of p(covid), classified copies |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in evaluation["transformed"].items():
        lines.append(
            f"| {name} | {t['n']} | {t['out']} | {t['corrected']} ({t['correction_right']}) | {t['in']} | "
            f"{t.get('warned_mirrored', 0)} | {_f(t['mean_abs_probability_change'])} |"
        )
    total = evaluation["held_out_total"]
    lines += [
        "",
        f"Non-radiographs of kinds never used to fit: {total['n']} images, {_pct(total['caught_rate'])} refused or corrected.",
        "",
        "| kind | n | refused or corrected | caught by |",
        "|---|---:|---:|---|",
    ]
    for name, t in evaluation["held_out"].items():
        caught = ", ".join(f"{k} {v}" for k, v in sorted(t["caught_by"].items(), key=lambda kv: -kv[1]))
        lines.append(f"| {name} | {t['n']} | {_pct(t['caught_rate'])} | {caught} |")
    cost = evaluation.get("cost")
    if cost:
        lines += [
            "",
            f"Cost (CPU time, one thread): {cost['check_ms']} ms per image for the check (view model on the image and its"
            " mirror image, colour share; the lung test reuses the segmenter's mask) against"
            f" {cost['whole_path_ms']} ms for decode + preprocessing + batch-1 inference of the same test-split PNGs:"
            f" {_pct(cost['check_share'])}.",
        ]
        if cost.get("colour_jpegs"):
            extra = cost["colour_jpeg_decode_extra_ms"]
            paid = (
                f"pays {extra} ms" if extra >= 0.5 else f"pays nothing measurable ({extra} ms, within noise)"
            )
            lines[-1] += (
                f" A colour-encoded JPEG film also {paid} for a colour decode instead of a grayscale one"
                f" ({cost['colour_jpegs']} `fullres/` JPEGs, whole path {cost['colour_jpeg_whole_path_ms']} ms):"
                f" {_pct(cost['colour_jpeg_check_share'])} with the view model."
            )
    return [*lines, ""]


def _segmenter_lines(card: dict[str, Any]) -> list[str]:
    report = card.get("segmenter_training")
    if not report:
        return []
    return [
        f"Lung segmenter: trained on {report['train_images']} training-split images ({report['annotations']}),"
        f" validation Dice {_f(report['val_dice_best'])} on {report['val_images']} validation-split images,"
        f" {report['train_seconds']:.0f} s on the 2-core CPU. Command: `{report.get('command')}`.",
        "",
    ]


def training_parity(card: dict[str, Any]) -> str:
    return f"{card['export']['parity_max_abs_diff']:.1e}"


def _member_lines(members: list[dict[str, Any]]) -> list[str]:
    """An ensemble's members: how each was trained and how each did on validation alone."""
    if not members:
        return []
    lines = ["", f"The model averages the logits of {len(members)} members trained on the same split:", ""]
    for index, member in enumerate(members):
        lines.append(
            f"- member {index}: `{member.get('command') or member['run']}`; validation AUROC"
            f" {_f(member['val_auroc'], 3)}, within ieee8023 {_f(member['val_within_source_auroc'], 3)};"
            f" {member['train_seconds']:.0f} s"
        )
    return [*lines, ""]
