"""Draw the planted motif of the psam example next to the one biolm learned, aligned.

    python exampleconfigs/psam/compare_motifs.py experiments/dna_psam/fine-tune/0 docs/psam_example_logos.png

Reads ``exampleconfigs/data/dna_binding_truth.json`` (the planted energies; betas = -energies)
and the fold's ``psams/psam_0.json``; the learned betas are shown on the strand and at the offset
where they match the planted ones best, with that similarity (Pearson r of the per-position
centred matrices, :func:`biolm.core.synthetic_binding.motif_similarity`) in the title.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from biolm.core.hookspecs import atomic_path
from biolm.core.synthetic_binding import motif_similarity, reverse_complement
from biolm.plugins.psam.export import draw_logo

TRUTH = Path(__file__).resolve().parents[1] / "data" / "dna_binding_truth.json"


def main(fold: str, out: str, truth: str = str(TRUTH)) -> float:
    planted = np.array(json.loads(Path(truth).read_text())["betas"][0])
    learned = np.array(json.loads((Path(fold) / "psams" / "psam_0.json").read_text())["monomer"][0])
    r, shift, strand = motif_similarity(learned, -planted)
    if strand:
        learned = reverse_complement(learned)
    lo, hi = min(0, shift), max(len(planted), shift + len(learned))
    frames = []
    for mat, start in ((planted, 0), (learned, shift)):
        frame = np.zeros((hi - lo, 4))
        frame[start - lo : start - lo + len(mat)] = mat - mat.mean(1, keepdims=True)
        frames.append(frame)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.55 * (hi - lo) + 1.5, 4.4))
    FigureCanvasAgg(fig)
    titles = ("planted (betas = -energies)", f"learned from scratch by biolm psam ({'reverse strand, ' if strand else ''}similarity r = {r:.3f})")
    for k, (frame, title) in enumerate(zip(frames, titles)):
        draw_logo(fig.add_subplot(2, 1, k + 1), frame, "ACGT", title)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    print(f"{out}: similarity {r:.3f} (shift {shift}, {'reverse' if strand else 'forward'} strand)")
    return r


if __name__ == "__main__":
    main(*sys.argv[1:])
