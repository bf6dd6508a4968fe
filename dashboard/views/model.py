"""Model page: pick a sample model or bring your own weights, dataset and trigger."""
import json
from pathlib import Path

import streamlit as st

from dashboard import cache, choices, figures
from dashboard.common import (USER_ERRORS, current_choice, default_sample, fmt_rate, page_link, sample_choice,
                              set_choice, show_error)
from dashboard.modelsetup import (DATASETS, DEFAULT_MAX_UPLOAD_MB, POSITIONS, accept_poisoned_upload, accept_upload,
                                  architecture_name, data_spec, normalization_spec, parse_kwargs, spec_choice, stored_upload,
                                  trigger_spec)
from defenses.readers.normalization import PRESETS as NORM_PRESETS, chance_warning
from dashboard.rundata import runs_dir
from defenses.readers.models import ARCHITECTURES
from sample_models import catalog, efficacy_rows, recovery_claim, recovery_sentence, training_summary

# The own-weights form's values before anything is chosen (session state, not value=, sets them:
# the form is filled from the model in use, and Streamlit refuses a widget given both).
OWN_DEFAULTS = {"weights_path": "", "arch": next(iter(ARCHITECTURES)), "tv_name": "", "local_class": "",
                "arch_kwargs": "{}", "num_classes": 0, "normalize": "none", "norm_custom": "", "dataset": "mnist5k",
                "data_location": "", "own_clean_count": 500, "trigger_kind": "unknown", "poisoned_path": "",
                "trigger_target": 0, "trigger_size": 4, "trigger_position": "bottom_right", "trigger_color": "1.0",
                "trigger_alpha": 0.2, "trigger_seed": 0, "trigger_image": ""}


def changed(new: dict, was: str | None, detail: str = "") -> None:
    """Say what is measured now, and what it replaced: a new trigger changes ASR under a similar title."""
    detail = f" ({detail})" if detail else ""
    st.session_state["changed_from"] = (f"Now measuring **{new['label']}**{detail}, instead of {was}." if was else
                                        f"Checked: still measuring **{new['label']}**{detail}; nothing changed.")


st.title("Model")
st.caption("Choose the model to examine: a small backdoored sample that ships with prunescope, or your own weights.")

choice = current_choice()
cat = catalog()
names = list(cat)
SOURCES = ["Sample model", "Your own weights", "A model spec"]
source = st.radio("Model source", SOURCES, horizontal=True, key="model_source",
                  index=0 if choice is None or "sample" in choice["model"] else 2 if choice.get("spec") else 1,
                  help="A model spec is the spec.json that `prunescope import` writes for a BackdoorBench attack "
                       "result: architecture, normalisation, dataset and poisoned test set in one file.")

if source == "Sample model":
    if not names:
        st.warning("No sample model is trained yet; run `python -m sample_models.train` or bring your own weights.")
    else:
        current = choice["model"].get("sample") if choice else None
        name = st.selectbox("Sample model", names, key="sample",
                            index=names.index(current if current in names else default_sample()),
                            format_func=lambda n: f"{cat[n]['title']}  ({n})")
        entry = cat[name]
        clean = st.number_input("Clean-set size (the defender's labelled clean images)", min_value=10, max_value=3500,
                                value=int(choice["data"].get("clean_count", 500)) if choice else 500, step=50,
                                key="clean_count")
        trig = entry.get("trigger") or {}
        st.caption(f"{entry['architecture']} on {entry.get('dataset')}; attack: **{entry.get('attack')}**"
                   + (f", target label {trig.get('target')}, poison rate {entry.get('poison_rate')}"
                      if entry.get("attack") != "none" else " (a clean control)")
                   + f"; trained with {training_summary(entry)}"
                   + f"; measured when trained: ACC {fmt_rate(entry.get('acc'))}, ASR {fmt_rate(entry.get('asr'))}.")
        role = entry.get("role")
        if role == "showcase":
            st.success(f"**Showcase.** {entry.get('why', '')}", icon=":material/check_circle:")
        elif role == "hard case":
            st.warning(f"**Hard case, for teaching.** {entry.get('why', '')}", icon=":material/school:")
        elif role == "control":
            st.info(f"**Clean control.** {entry.get('why', '')}", icon=":material/balance:")
        rows = efficacy_rows(entry)
        claim = recovery_claim(entry)
        if claim:
            st.markdown(f"**Trigger recovery.** {recovery_sentence(entry, claim)} The Defend page sets RNP and Neural "
                        "Cleanse to these settings in one click; the Triggers page draws the result.")
        if rows:
            with st.expander("What each defense did on this sample (measured when it was trained, test split)",
                             expanded=role == "showcase"):
                st.dataframe(rows, hide_index=True, width="stretch")
                st.caption("Cut: where the model was pruned. *The defense's threshold* is its own rule (e.g. ANP's masks "
                           "below 0.2); *most pruning that keeps ACC* needs no trigger: the most neurons, in the "
                           "defense's order, whose pruning keeps clean accuracy within 2 points on the defender's "
                           "clean images. Removed: ASR at most 2% with ACC within 2 points. "
                           "`docs/study.md` has the study these samples were chosen from.")
        set_choice(sample_choice(name, int(clean)))  # the app writes it into the URL: a reload opens it again
elif source == "A model spec":
    st.caption("Convert a BackdoorBench result first: `prunescope import record/<attack>/attack_result.pt OUT_DIR`. "
               "The spec names the architecture, the dataset's normalisation and the poisoned test set (the ASR set).")
    s1, s2, s3 = st.columns([2, 2, 1])
    if choice and choice.get("spec"):  # the form shows the spec in use (a page switch clears widgets)
        d = choice["data"]
        for k, v in {"spec_path": choice["spec"], "spec_clean_count": int(d.get("clean_count", 500)),
                     "spec_data": d.get("root") or (d["dataset"] if ":" in str(d.get("dataset")) else "")}.items():
            st.session_state.setdefault(k, v)
    spec_file = s1.text_input("Path of spec.json (or its folder)", key="spec_path")
    spec_root = s2.text_input("Its dataset's local folder", key="spec_data",
                              help="The folder holding CIFAR-10, MNIST or GTSRB as torchvision saves them; or another "
                                   "dataset instead, as npz:PATH or folder:PATH.")
    st.session_state.setdefault("spec_clean_count", 500)
    spec_clean = s3.number_input("Clean-set size", min_value=10, step=50, key="spec_clean_count")
    if st.button("Check and use this spec", type="primary", key="use_spec"):
        try:
            other = spec_root.strip() if spec_root.strip().startswith(("npz:", "folder:")) else ""
            new = spec_choice(spec_file, "" if other else spec_root, int(spec_clean), other)
            cache.model_summary(json.dumps(new, sort_keys=True))  # refuses a spec that does not load, here
            changed(new, set_choice(new))
        except USER_ERRORS as e:
            show_error(e)  # the previous choice stays in use
else:
    max_mb = st.get_option("server.maxUploadSize") or DEFAULT_MAX_UPLOAD_MB
    st.caption("Weights are read as safetensors or as a PyTorch state dict with `weights_only=True`: nothing in the "
               "file is ever executed, and whole pickled models or TorchScript files are refused. "
               "Save `model.state_dict()`.")
    own = choice if choice and choice["model"].get("checkpoint") and not choice.get("spec") else None
    before = choices.saved(runs_dir())
    if before:
        b1, b2 = st.columns([4, 1], vertical_alignment="bottom")
        again = b1.selectbox("Your models used before", range(len(before)), key="used_before",
                             format_func=lambda i: before[i]["label"])
        if b2.button("Use it again", key="use_again"):
            own = before[again]
            changed(own, set_choice(own))
    # The form shows the model in use: a page switch clears Streamlit's widgets, and pressing the
    # button on an empty form would replace the model by the same weights without its trigger.
    shown = own.get("key") if own else None
    fill = {**OWN_DEFAULTS, **(choices.form_values(own) if own else {})}
    for k, v in fill.items():
        if st.session_state.get("own_form_for") != shown or k not in st.session_state:
            st.session_state[k] = v
    st.session_state["own_form_for"] = shown
    if own:
        st.info(f"In use: **{own['label']}**. The form shows its settings; change any and check again to "
                "replace it.", icon=":material/memory:")
    up_col, path_col = st.columns(2)
    with up_col:
        uploaded = st.file_uploader(f"Upload weights (up to {max_mb} MB)", type=["safetensors", "pt", "pth", "bin", "ckpt"],
                                    key="upload")
    with path_col:
        local_path = st.text_input("…or the path of a weights file on this machine", key="weights_path")
    a1, a2, a3 = st.columns(3)
    with a1:
        arch_choice = st.selectbox("Architecture", list(ARCHITECTURES) + ["tv:NAME", "local class"], key="arch")
        tv_name = st.text_input("torchvision model name", key="tv_name") if arch_choice == "tv:NAME" else ""
        local_class = (st.text_input("Your class as path/to/file.py:ClassName (this runs that file)",
                                     key="local_class") if arch_choice == "local class" else "")
    with a2:
        kwargs_text = st.text_input("Architecture arguments (JSON)", key="arch_kwargs")
        num_classes = st.number_input("Number of classes (0: the dataset's)", min_value=0, step=1, key="num_classes")
        norm_choice = st.selectbox(
            "Input normalisation it was trained with", ["none", *NORM_PRESETS, "custom"], key="normalize",
            format_func=lambda n: {"none": "none (pixels in [0, 1])", "custom": "custom mean and std"}.get(n, n),
            help="Most CIFAR scripts train on Normalize(mean, std); measured on raw pixels such a model's ACC and "
                 "ASR are silently wrong. Applied in front of the model; triggers stay in pixel space.")
        norm_text = (st.text_input("Mean, std per channel (e.g. 0.49,0.48,0.45 / 0.25,0.24,0.26)", key="norm_custom")
                     if norm_choice == "custom" else "")
    with a3:
        dataset = st.selectbox("Dataset", DATASETS, key="dataset",
                               help="mnist5k ships with the project (offline); the others are read from your disk.")
        location = ("" if dataset == "mnist5k" else
                    st.text_input("Local root folder" if dataset in ("cifar10", "mnist", "gtsrb") else "Path",
                                  key="data_location"))
        own_clean = st.number_input("Clean-set size", min_value=10, step=50, key="own_clean_count")

    st.markdown("**Trigger** (if you know it; ASR needs it, every trigger-free aid works without it)")
    kind = st.radio("Kind of trigger", ["unknown", "badnets", "blend", "poisoned"], horizontal=True,
                    key="trigger_kind",
                    format_func=lambda k: {"poisoned": "poisoned test set (x_bd, y_bd)"}.get(k, k),
                    help="A poisoned test set: the attack's own triggered test images, for attacks with no "
                         "patch or blend (WaNet, input-aware, SSBA, ...). An .npz of x_bd (images in pixel space) "
                         "and y_bd (their attack labels), with y_true (true labels) for the oracle.")
    fields = {}
    poisoned_upload = None
    if kind == "poisoned":
        p1, p2 = st.columns(2)
        poisoned_upload = p1.file_uploader("Upload the poisoned test set (.npz)", type=["npz"], key="poisoned_upload")
        fields["path"] = p2.text_input("…or its path on this machine", key="poisoned_path").strip() or None
    elif kind != "unknown":
        t1, t2, t3, t4 = st.columns(4)
        fields["target"] = int(t1.number_input("Target label", min_value=0, step=1, key="trigger_target"))
        if kind == "badnets":
            fields["size"] = int(t2.number_input(
                "Patch size (pixels)", min_value=1, step=1, key="trigger_size",
                help="The attacker's patch side. The samples use 4; a size that differs from the trained one "
                     "measures a weaker trigger (a 3-pixel patch on a 4-pixel backdoor gave ASR 33.7%)."))
            fields["position"] = t3.selectbox("Position", POSITIONS, key="trigger_position")
            colour = t4.text_input("Colour (grey level 0-1, checkerboard or noise)", key="trigger_color")
            try:
                fields["color"] = float(colour)
            except ValueError:
                fields["color"] = colour.strip()
        else:
            fields["alpha"] = float(t2.slider("Blend alpha", 0.01, 1.0, key="trigger_alpha"))
            fields["seed"] = int(t3.number_input("Pattern seed", min_value=0, step=1, key="trigger_seed"))
            fields["image"] = t4.text_input("…or a pattern image path", key="trigger_image").strip() or None

    if st.button("Check and use this model", type="primary", key="use_own"):
        try:
            if uploaded is not None:
                file_name = uploaded.name
                upload = accept_upload(uploaded.getvalue(), file_name, runs_dir(), int(max_mb) * 1024 * 1024)
            elif local_path.strip():
                p = Path(local_path.strip()).expanduser()
                if not p.is_file():
                    raise FileNotFoundError(f"No weights file at {p}.")
                # the weights in use, stored under the uploads folder, keep the name they came with
                file_name = own["file"] if own and str(p) == own["model"]["checkpoint"] and own.get("file") else p.name
                upload = (stored_upload(p, runs_dir())
                          or accept_upload(p.read_bytes(), file_name, runs_dir(), max_bytes=1 << 40))
            else:
                raise ValueError("Upload a weights file or give its path first.")
            if poisoned_upload is not None:
                fields["path"] = accept_poisoned_upload(poisoned_upload.getvalue(), poisoned_upload.name, runs_dir(),
                                                        int(max_mb) * 1024 * 1024)
            model_spec = {"architecture": architecture_name(arch_choice, tv_name, local_class),
                          "checkpoint": str(upload.path), "arch_kwargs": parse_kwargs(kwargs_text),
                          "num_classes": int(num_classes) or None, "input_shape": None}
            normalize = normalization_spec(norm_choice, norm_text)
            if normalize is not None:
                model_spec["normalize"] = normalize
            trigger = trigger_spec(kind, **fields)
            new = {"model": model_spec, "data": data_spec(dataset, location, int(own_clean)), "trigger": trigger,
                   "label": choices.own_label(model_spec, file_name, trigger), "file": Path(file_name).name}
            summary = cache.model_summary(json.dumps(new, sort_keys=True))
            # Record what the check found, so the run does not have to guess.
            model_spec.update(input_shape=summary["shape"], num_classes=summary["num_classes"])
            changed(new, set_choice(new), upload.describe())
        except USER_ERRORS as e:
            show_error(e)  # the previous choice stays in use

choice = current_choice()
if choice is None:
    st.stop()
if st.session_state.get("changed_from"):  # said once, after the rerun the change asked for
    st.success(st.session_state.pop("changed_from"), icon=":material/swap_horiz:")
st.divider()
st.subheader(f"In use: {choice['label']}")
try:
    summary = cache.model_summary(json.dumps(choice, sort_keys=True))
except USER_ERRORS as e:
    show_error(e)
    st.stop()
m1, m2, m3 = st.columns(3)
m1.metric("Clean accuracy (ACC)", fmt_rate(summary["acc"]))
m2.metric("Attack success rate (ASR)", fmt_rate(summary["asr"]),
          help="Fraction of triggered test images (true label not the target) classified as the target; for a "
               "poisoned test set, the fraction of its images classified as their attack labels.")
m3.metric("Classes", summary["num_classes"])
st.caption(summary["data"])
if choice.get("trigger") is None and not cat.get(choice["model"].get("sample"), {}).get("trigger"):  # none known
    page_link("views/scan.py", "Scan it: is it backdoored, and which label?", ":material/radar:")
near_chance = chance_warning(summary["acc"], summary["num_classes"])
if near_chance:
    st.warning(near_chance, icon=":material/warning:")
images = list(summary["clean"])
titles = [f"label {y} → {p}" for y, p in zip(summary["labels"], summary["pred"])]
if summary["triggered"] is not None:
    images += list(summary["triggered"])
    # short: six titles share a row 420 px wide at 1000 px ("poisoned → 7" ran into the next)
    titles += [("x_bd" if summary["poisoned"] else "trig.") + f" → {p}" for p in summary["pred_triggered"]]
st.plotly_chart(figures.image_grid(images, titles, ncols=len(summary["clean"]),
                                   title=("Test images (top) and poisoned test images (bottom), with predictions"
                                          if summary["poisoned"] else
                                          "Test images (top) and the same with the trigger (bottom), with predictions")),
                key="examples")

st.subheader("Neuron noise: does this model collapse onto one label?")
st.caption("ANP's premise, checked without the trigger: perturb every neuron's scale and shift by up to ±eps "
           "(ANP's adversarial noise, BatchNorm on batch statistics) and see where the errors go. A backdoored "
           "model's errors tend to pile onto its target label; a clean model's spread over the labels.")
noise_key = json.dumps(choice, sort_keys=True)
if st.button("Run the neuron-noise check (seconds on a CPU)", key="noise_check") or \
        st.session_state.get("noise_done") == noise_key:
    try:
        noise = cache.neuron_noise(noise_key)
    except USER_ERRORS as e:
        show_error(e)
    else:
        st.session_state["noise_done"] = noise_key
        st.plotly_chart(figures.neuron_noise_figure(noise["points"], noise["suspect"]), key="noise_chart")
        if noise["suspect"] is not None:
            st.warning(f"Under neuron noise the errors pile onto label {noise['suspect']} at every noise bound, "
                       f"far above an even share: label {noise['suspect']} is a backdoor suspect. (ANP learns "
                       "against this noise; whether pruning then removes the backdoor depends on whether its masks "
                       "single out the neurons that carry it.)")
        else:
            st.info("No single label takes most of the errors at every noise bound: this check sees no "
                    "collapse onto a target (a backdoor may still be there, spread over many neurons).")
        st.caption(f"Measured on the first {noise['images']} test images, one noise draw per batch of 256.")
