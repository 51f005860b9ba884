"""The scenes world: two objects in a spatial relation, 64×64, drawn by a flow-matching MMDiT (SD3-style).

A harder toy world than v1 (toy/data.py), with headroom: guidance, step count and over-guidance all matter.

* data.py    procedural scenes, prompts, prompt/picture labels                   (plain torch)
* text.py    the scenes vocabulary for the toy text encoder                       (plain torch)
* reader.py  reads every attribute back from a picture; accuracy, FD features    (plain torch)
* model.py   the scenes model as a ComfyUI model class (MMDiT, flow)             [imports ComfyUI]
* train.py   reproduces weights/scenes_t2i.safetensors (python -m toy.scenes.train)
"""
