"""Chat in the terminal with a llama2.c chat model (Llama 2's [INST] format).

python examples/chat.py llama-2-7b-chat.bin tokenizer.bin
python examples/chat.py          # the built-in story model, for a try
"""

import sys

import tinyllm

if len(sys.argv) > 1:
    model = tinyllm.Model(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
else:
    model = tinyllm.Model.default()
model.chat(system="You are a helpful assistant.", temperature=0.7)
