"""Stream a story from the built-in model, then print the speed.

python examples/story.py "Once upon a time, a dragon"
"""

import sys

import tinyllm

prompt = sys.argv[1] if len(sys.argv) > 1 else "Once upon a time"
model = tinyllm.Model.default()
print(prompt, end="", flush=True)
stream = model.stream(prompt, max_tokens=200, temperature=0.8, seed=42)
for piece in stream:
    print(piece, end="", flush=True)
print()
stats = stream.stats
print(
    f"{stats['generated_tokens']} tokens at "
    f"{stats['generated_tokens'] / stats['generate_seconds']:.0f} tokens/s",
    file=sys.stderr,
)
