"""The CoRe² toy world: a tiny text-to-image world that runs on any CPU, for trying and measuring CoRe².

* data.py        procedural pictures (4 shapes × 6 colours × 5 places, 32×32) with prompts and labels
* text.py        the toy text encoder (fixed vocabulary, learned embeddings) -> CONDITIONING-shaped tensors
* pixels.py      the toy "latent": the picture folded into 2×2 patches (12 × 16 × 16), no VAE
* model.py       the toy model as a ComfyUI model class (UNetModel, v-prediction)      [imports ComfyUI]
* world.py       load_toy_model / encode / decode / generate for scripts and nodes     [imports ComfyUI lazily]
* classifier.py  attribute classifier: the toy world's prompt-following measure
* judge_files.py saving and loading the judges (classifier, scenes reader)
* evaluate.py    attribute accuracy of generated pictures (python -m toy.evaluate)
* train_toy.py   reproduces weights/toy_t2i.safetensors (python -m toy.train_toy)

data.py, text.py, pixels.py and classifier.py are plain torch (no ComfyUI).
"""
