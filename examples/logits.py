"""Next-token probabilities from the logits, with NumPy.

python examples/logits.py
"""

import numpy as np

import tinyllm

model = tinyllm.Model.default()
ids = model.tokenize("Once upon a time, there was a little")
logits = model.logits(ids)[-1]  # the logits after the last token
probs = np.exp(logits - logits.max())
probs /= probs.sum()
for i in np.argsort(probs)[::-1][:5]:
    print(f"{probs[i]:6.1%}  {model.detokenize([int(i)])!r}")
