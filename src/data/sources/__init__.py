"""sources.yaml: several data sets, each in its own format, read as one set of Records.

Why: real sites hold what they have (AIDER class folders, C2A person boxes
as COCO json or YOLO txt, CrisisIBD/MEDIC tables); converting them first
would be one more copy to keep in sync. The spec names each source, where
its labels are and how its class names map onto ours::

    classes:            # optional; default: the caller's (the model's) class lists
      victim: [person]
      disaster: [collapsed_building, fire, flooded_areas, traffic_incident, normal]
    class_map:          # optional, per task: source class name -> our class name
      victim: {lying: person, sitting: person, standing: person}
      disaster: {}
    sources:
      - name: c2a                    # unique; first component of every image key
        root: c2a                    # relative to the spec file, or absolute
        boxes: {format: coco, file: annotations.json}
        classes: {format: folders}   # root/<class>/*.jpg, over the same images
      - name: crisis
        root: crisis
        classes: {format: tsv, file: labels.tsv, image_column: image,
                  class_column: label, delimiter: "\\t"}   # csv: delimiter ","
      - name: drone
        root: drone
        boxes: {format: yolo, names: [lying, standing]}  # root/images + root/labels

Box formats: ``coco`` (``file``), ``yolo`` (class ids index ``classes.victim``,
or ``names`` lists the source's own names, mapped through class_map). Class
formats: ``folders``, ``tsv`` / ``csv`` (``file``, ``image_column`` = image,
``class_column`` = disaster_class, ``delimiter``). Any label spec may set
``drop_unmapped: true``: labels whose class maps to nothing are then left
out and counted (``ErrorReport.notes``) instead of being errors. A source may
also carry its own ``class_map``, merged over the top-level one.

An image's key is ``<source name>/<path relative to the source root>``
(``c2a/fire/img1.jpg``): boxes and classes of a source meet on that path; an
image only one label spec lists just lacks the other label (has_boxes /
has_class False). Images are found where each format keeps them: yolo under
root/images, folders under root/<class>/, coco and tables by the file names
they list.

Errors in the spec itself and label files that cannot be parsed at all
(missing, not JSON, a table without its columns) always raise; problems
with single images, rows or annotations follow ``on_error`` as in
``formats.load_yolo_dataset``. Which image files are accepted (EXIF
rotation, 16-bit PNG, decompression bombs, ...) is decided by
``formats.images.check_image``; see that module's docstring. Images and
per-image label files must lie inside their source's root, also after
following symlinks (``formats.inside_folder``); the spec's own paths
(``root``, ``file``) are the operator's choice and may point anywhere.
"""
from src.data.sources.keys import SourceRecord, record_key, split_record_key
from src.data.sources.loading import load_sources
from src.data.sources.spec import BOX_FORMATS, CLASS_FORMATS, SourceSpec, Spec, read_spec

__all__ = ["BOX_FORMATS", "CLASS_FORMATS", "SourceRecord", "SourceSpec", "Spec", "load_sources", "read_spec",
           "record_key", "split_record_key"]
