"""Synthetic disaster scenes: the built-in default data set (`python -m src.data.synthetic`).

Why: the federation needs a data set every site can hold without shipping
images around, and without real data mounted. This package stands in for
AIDER (five disaster-scene classes) and C2A (people in disaster scenes):
aerial / oblique scenes of collapsed buildings, fires, floods, traffic
incidents and normal land, with person figures (the victims, boxed) and
person-sized things that are not people (hard negatives).

It is deterministic: image i depends only on (seed, i), never on the
number of workers or on other images, so every site regenerates identical
images from the seed instead of downloading them. Files are written in the
same real formats the readers handle (JPEG, YOLO txt, a class TSV, PNG label
maps), so the synthetic set exercises the same code path as real data. The
masks label what the painters draw (water, fire and dense smoke, rubble and
debris; everything else background) from the very shapes of the image, so
writing them changes no image and no box.

Two knobs make it look more like what a drone team actually collects
(both off by default): ``burst_size`` images per scene, a burst of
near-duplicate frames (the same scene and victims, each frame a slightly
different crop and exposure), and ``class_weights``, how often each
disaster class occurs (e.g. mostly ``normal`` land, rare fires). Splits of a
burst-generated set keep each burst in one split (``scene_groups``), so no
test image has a near-duplicate in training.

Classes are confusable at the margins on purpose, controlled by
``difficulty`` in [0, 1]: smoke in traffic scenes, fires with little flame,
debris in both collapsed and flooded scenes, intact houses and roads in
several classes, overlapping ground palettes and a per-image brightness /
tint so mean colour alone does not give the class away.

Modules: options (SceneOptions), drawing (colours, shape helpers), elements
(houses, roads, cars, smoke, ...), scenes (one painter per disaster class),
distractors (hard negatives), victims (person figures and their visible
boxes), regions (the per-pixel region map painted with the image), render (one
image in memory), writer (the data set on disk).
"""
from src.data.synthetic.options import SceneOptions, default_class_names, default_mask_classes
from src.data.synthetic.regions import DEFAULT_MASK_CLASSES, REGION_NAMES
from src.data.synthetic.render import disaster_class_of, render_labelled_scene, render_scene
from src.data.synthetic.writer import generate_dataset, generate_from_config, scene_groups, yolo_lines

__all__ = ["DEFAULT_MASK_CLASSES", "REGION_NAMES", "SceneOptions", "default_class_names", "default_mask_classes",
           "disaster_class_of", "generate_dataset", "generate_from_config", "render_labelled_scene", "render_scene",
           "scene_groups", "yolo_lines"]
