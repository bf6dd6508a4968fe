"""Learn page: what each defense computes, with its formula, what each chart shows, and what the scan measures."""
import streamlit as st

st.title("Learn: how the defenses work")
st.markdown(
    "A backdoored classifier behaves normally on clean images but outputs the attacker's **target label** whenever a "
    "small **trigger** is present. All the defenses here **score every neuron** (one output channel: a BatchNorm "
    "channel, or a Conv2d/Linear output channel where there is no BN; never the final classifier), then **prune** the "
    "most suspicious ones. Two numbers judge the result on a held-out test split: **ACC**, the clean accuracy, and "
    "**ASR**, the fraction of triggered images (true label not the target) that land on the target.")
st.latex(r"\mathrm{ASR} = \Pr_{(x,y)\,:\,y \neq t}\big[f\big((1-M)\odot x + M \odot P\big) = t\big]")

tabs = st.tabs(["ANP", "RNP", "Neural Cleanse", "CLP", "Hölder pruning", "When pruning works", "Reading the charts",
                "Scan"])
with tabs[0]:
    st.markdown("**Adversarial Neuron Pruning** (Wu & Wang, NeurIPS 2021). Backdoored networks collapse under small "
                "adversarial perturbations of their neurons. Each neuron gets a mask $m \\in [0,1]$ and, for the "
                "adversary, multiplicative noise $\\delta, \\xi \\in [-\\epsilon, \\epsilon]$ on its BN scale "
                "$\\gamma$ and shift $\\beta$:")
    st.latex(r"\gamma' = \gamma\,(m+\delta), \qquad \beta' = \beta\,(1+\xi)")
    st.latex(r"\min_{m\in[0,1]^n}\; \alpha\,\mathcal{L}(m, 0) + (1-\alpha)\max_{\|\delta\|_\infty,\|\xi\|_\infty\le\epsilon}"
             r"\mathcal{L}(m+\delta, \xi)")
    st.markdown("The inner maximum is one signed-gradient step (of size $\\epsilon$) from a random start; the outer "
                "step is SGD on the masks. Neurons whose mask falls **low** are pruned (paper's cut: 0.2). "
                "Defaults: $\\epsilon=0.4$, $\\alpha=0.2$, mask lr 0.2, 2000 iterations of 128 images. "
                "The Model page's **neuron-noise check** draws the paper's first plot for your model: the error "
                "rate under this noise as $\\epsilon$ grows, and how many of the errors go to one label. "
                "Errors piling onto one label are ANP's premise; they do not promise that few neurons carry "
                "the backdoor. How the model was trained matters: compare the two BadNets CNN samples, the same "
                "network trained with Adam (`cnn_badnets`) and with the papers' SGD recipe (`cnn_badnets_sgd`). "
                "ANP's masks single out far more of the second one's backdoor neurons.")
with tabs[1]:
    st.markdown("**Reconstructive Neuron Pruning** (Li et al., ICML 2023): *unlearn, then recover*.")
    st.latex(r"\text{1. unlearn: } \max_\theta \mathcal{L}_{CE}(f_\theta; D_{clean}) \text{ until train acc} \le 0.2")
    st.latex(r"\text{2. recover: } \min_{m\in[0,1]^n} \mathcal{L}_{CE}(f_{\theta_{unl}} \text{ with } \gamma' = m\gamma"
             r"; D_{clean})")
    st.markdown("Gradient ascent quickly destroys the clean features but leaves the backdoor in place; recovering "
                "clean accuracy with masks restores the clean filters and leaves the backdoor filters with **low** "
                "masks, which are then pruned from the *original* model. The unlearned model is kept: it is what "
                "trigger recovery works on.")
    st.markdown("**On small nets the paper's unlearning rate is harsh.** At 0.01 unlearning wrecks these digit "
                "models within 10-20 steps, and the recovery then cannot tell backdoor filters from wrecked clean "
                "ones: it prunes dozens. On the showcase `cnn_blend_subnet` a gentler rate, **0.001**, leaves the "
                "clean task at 76% after unlearning, and the recovery prunes 5 neurons: ACC 98.6% -> 97.7%, ASR "
                "98.5% -> 1.2% (at 0.01: 86 neurons, ACC 20%). The Defend page offers that sample's measured rate "
                "and the paper's, one click each.")
with tabs[2]:
    st.markdown("**Neural Cleanse** (Wang et al., S&P 2019), here run on RNP's unlearned model. For each label $t$, "
                "find the smallest mask $M$ and a pattern $P$ that send clean images to $t$:")
    st.latex(r"\min_{M,P}\; \mathcal{L}_{CE}\big(f((1-M)\odot x + M\odot P),\, t\big) + \lambda\,\|M\|_1")
    st.latex(r"\text{anomaly}(t) = \frac{\operatorname{median}_k \|M_k\|_1 - \|M_t\|_1}"
             r"{1.4826\cdot\operatorname{MAD}_k \|M_k\|_1}")
    st.markdown("A label whose anomaly index exceeds **2** has a suspiciously small trigger and is flagged as the "
                "backdoor target. None of this needs the true trigger.")
    st.markdown("**Unlearn gently, or the trigger comes out as a fragment** (`docs/recovery.md`). On the hard case "
                "`cnn_badnets`, where pruning fails, recovery still finds the backdoor. After RNP's unlearning at "
                "**0.001** the model keeps its clean task (test ACC 97%), and the target's mask comes out half the "
                "size it has on the original (L1 4.5 against 8.2) and far more anomalous (index 4.3-6.4 against "
                "2.9). The trigger it recovers sits on the real patch and flips 88% of the original's images. At "
                "the paper's **0.01** the unlearned model is near chance and already calls half of all digits 0: "
                "four pixels of the patch are enough there, a second label is flagged too, and that fragment "
                "flips only 19% of the original's images.")
with tabs[3]:
    st.markdown("**Channel Lipschitzness-based Pruning** (Zheng et al., ECCV 2022), data-free. For a BN channel "
                "$k$ after a convolution with filter $W_k$, the upper bound of its channel Lipschitz constant is")
    st.latex(r"\mathrm{UCLC}_k = \sigma_{\max}(W_k)\,\frac{|\gamma_k|}{\sqrt{\mathrm{Var}_k}}")
    st.latex(r"\text{prune } k \text{ if } \mathrm{UCLC}_k > \mu_{layer} + u\,\sigma_{layer}, \quad u = 3")
    st.markdown("Here **high** is suspicious: a backdoor channel reacts strongly to a small input (the trigger). "
                "Sweeps over CLP-style scores are over $u$, the number of standard deviations above the layer mean.")
with tabs[4]:
    st.markdown("**Hölder pruning** (an ICLR 2025 submission, withdrawn; no public code, so the definition here is "
                "prunescope's). **Threat model: a clean, frozen feature extractor** with an MLP head trained on "
                "poisoned data, so the backdoor sits in a few head neurons. For head neuron $i$, "
                "$a_i(u) = \\phi(w_i\\cdot u + b_i)$:")
    st.latex(r"H_i(\alpha) = \max_{n,\,k}\; \frac{|a_i(u_n + d) - a_i(u_n)|}{\|d\|_2^{\alpha}},\qquad"
             r" d = \epsilon_k\,\frac{\nabla a_i(u_n)}{\|\nabla a_i(u_n)\|_2}")
    st.markdown("With **one radius**, $\\alpha$ only rescales every constant by the same factor and cannot change "
                "the ranking: **$\\alpha$ only matters with several radii** $\\epsilon_k$. At $\\alpha=1$ on the "
                "pre-activation, $H_i = \\|w_i\\|_2$, CLP's constant. The cut is the first minimum of the constants' "
                "kernel density to the right of its main mode (else mean $+\\,3\\,$std); the Explore page draws it.")
    st.markdown("**Does the backdoor sit in a few head neurons?** Not when the head is trained on poisoned data from "
                "scratch: it spreads over about 24 of the 384 (`mlp_head_badnets`, a hard case). It does when it is "
                "written into a few neurons of a clean head (a subnet-replacement attack, `mlp_head_subnet`): to "
                "outvote the clean logits those neurons grow the largest weights in their layer, and the density "
                "cut prunes them.")
with tabs[5]:
    from sample_models import catalog

    st.markdown("Whether pruning removes a backdoor depends on the **regime**: where the trigger sits, what it looks "
                "like, the network and how it was trained, not only on the defense's maths. prunescope's samples were "
                "chosen from a study that changes one factor at a time (`python -m bench.study`, its table in "
                "`docs/study.md`). The **showcase** samples are where a defense works; the **hard cases** are kept "
                "for teaching, and each says what the study measured about why pruning fails there.")
    for role, head in (("showcase", "Showcases"), ("hard case", "Hard cases")):
        chosen = [e for e in catalog().values() if e.get("role") == role]
        if chosen:
            st.markdown(f"**{head}**")
            for e in chosen:
                st.markdown(f"- **{e['title']}** (`{e['name']}`): {e.get('why', '')}")
with tabs[6]:
    st.markdown("""
- **Live view (Defend)**: the progress bar follows the worker's stages; the loss curve comes from the step events;
  the histogram compares the first and the latest score snapshot (masks drifting down are the suspects); the
  probes are the ACC/ASR of the model pruned at the default cut at each snapshot.
- **Sweep (Explore)**: ACC and ASR of the model pruned at each precomputed threshold. Click a point or move the
  slider: the numbers shown are those precomputed points, nothing is recomputed.
- **ACC vs ASR**: the trade-off curve, top left is best. **Red dashed curves use the test trigger**, which a real
  defender does not have.
- **The oracle's curve** (when the run asked for it): a yardstick, not a defense. Knowing the trigger, it learns
  masks that keep the true label on clean *and* on triggered images while switching off as few neurons as
  possible; pruning its lowest masks by count is about the best any pruning could do on this model. Where the
  oracle needs few neurons and the defense many, the defense's criterion misses the backdoor; where the oracle
  itself needs many, or costs many ACC points, the backdoor resists pruning.
- **Triage without the trigger**: the ACC-drop budget (the largest cut whose clean accuracy stays within the
  budget), the largest gap and the knee of the sorted scores, CLP's $u$ rule, and RNP's flagged label.
- **Scores**: per-layer histograms, violins or ECDFs of the scores; Hölder runs add the density with its cut.
- **Neuron**: the network map (one row per layer, one cell per neuron, red the suspicious end, a black edge where
  the cut prunes); a neuron's mask during the run; its activation on clean test images against the same images
  with the trigger, and the gap $(\\bar a_{trig} - \\bar a_{clean}) / \\sigma_{clean}$ (a backdoor neuron is one the
  trigger moves far outside its clean range); its feature map; and captum's neuron attribution: which pixels make
  it fire. On the ANP demo run of the showcase, the most suspicious neuron (classifier.2[92]) moves +11.5 clean
  std-devs under the trigger, and 21% of its attribution lies on the trigger's 16 pixels (2% of the image); pruning
  it alone leaves ASR at 93.5%: the backdoor is carried by several neurons, which is why the cut takes ten.
- **Triggers**: mask $M$, pattern $P$ and $M\\odot P$ per label beside the true trigger, the anomaly index, and
  captum attributions (Saliency: $|\\partial f_c/\\partial x|$; Integrated Gradients:
  $(x - x_0)\\int_0^1 \\partial f_c(x_0 + s(x-x_0))/\\partial x\\,ds$) before and after pruning.
""")
with tabs[7]:
    from defenses.scan import all_signals

    st.markdown("**The scan** (the Scan page, or `prunescope scan`) asks *is this model backdoored, and which label?* "
                "before any pruning, without the trigger. Each signal below computes one number per label, its "
                "evidence that the label is a backdoor target:")
    for info in all_signals().values():
        st.markdown(f"- **{info.title}** ({info.paper}): {info.measures}." +
                    ("" if info.needs_data else " It needs no images."))
    st.markdown("Every signal is read through the same **outlier score**: how many median absolute deviations "
                "(MADs) the most suspicious label stands above the median label, Neural Cleanse's anomaly index "
                "generalised. The scan combines the signals' outlier scores with a **logistic calibration** fitted on "
                "a development zoo of clean and backdoored models, and measures it with one attack kind held out of "
                "the fit at a time, so the rates its verdict quotes are for attacks it was not fitted on. The "
                "suspected target is the label with the largest combined evidence across the signals. A low "
                "probability says **no evidence of a backdoor was found**, never that the model is clean: attacks "
                "unlike those in the zoo may pass unseen.")
    st.latex(r"\text{outlier}(t) = \frac{e_t - \operatorname{median}_k e_k}{1.4826\cdot\operatorname{MAD}_k e_k}, "
             r"\qquad o_s = \max_t \text{outlier}_s(t), \qquad p = \sigma\Big(b + \sum_s w_s \min(o_s, 20)\Big)")
