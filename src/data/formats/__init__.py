"""Readers that turn on-disk label formats into ``Record``s, one module per format.

Supported layouts (the synthetic generator writes the first; real sites
often have one of them already):

* ``yolo``: ``root/images/<stem>.jpg`` with ``root/labels/<stem>.txt``.
* ``tsv``: a disaster-class table (``root/classes.tsv`` or a source's own
  tsv / csv) of image paths and class *names*.
* ``class_folders``: AIDER-style ``root/<class_name>/*.jpg``.
* ``coco``: a COCO instances json (C2A and most annotation tools).
* ``masks``: segmentation label maps, ``root/masks/<stem>.png`` in the YOLO
  layout: index or palette PNGs (values through a ``class_map``, 255 unlabeled)
  or colour PNGs (colours through a ``class_map``).

``src.data.sources`` combines them. Every problem is a ``DataError``
(``errors``) whose message names the file (and line), because at a federated
site nobody else can look at the data to find it. Which image files are
accepted is decided by ``images.check_image``; which paths may be opened at
all by ``paths`` (confined to the data folder, symlinks included). The size
limits a site may raise live in their modules and are read at call time:
``images.MAX_IMAGE_PIXELS``, ``yolo.MAX_LABEL_BYTES``.

Under ``on_error='skip'`` an image or per-image label file that leaves its
folder is skipped and counted like any bad file: it is not read either way,
and one planted link should not stop a site. A whole label file (the class
table) doing so raises, like any label file that cannot be read; so does a
manifest row (see ``src.data.manifests``).
"""
from src.data.formats.class_folders import ClassFolders, read_class_folders, scan_class_folders
from src.data.formats.coco import CocoFile, CocoImage, bbox_to_xyxy, read_coco
from src.data.formats.errors import (BAD_LABEL, BAD_NAME, MISSING, OUTSIDE, TOO_LARGE, UNREADABLE, UNSUPPORTED,
                                     DataError, ErrorReport, yaml_error)
from src.data.formats.images import check_image, image_size, open_image
from src.data.formats.labels import COORD_TOLERANCE, class_lookup, clip_box, read_lines, read_text_file, split_row
from src.data.formats.masks import (IGNORE_INDEX, MaskClassMap, mask_class_map, mask_file, read_mask,
                                     yolo_mask_lookup)
from src.data.formats.paths import (IMAGE_SUFFIXES, display_path, inside_folder, list_images, listing_of,
                                    missing_image, relative_key, utf8_name_error)
from src.data.formats.tsv import ClassTable, parse_class_table, read_class_table
from src.data.formats.yolo import load_yolo_dataset, read_yolo_labels, yolo_label_files

__all__ = [
    "BAD_LABEL", "BAD_NAME", "COORD_TOLERANCE", "IGNORE_INDEX", "IMAGE_SUFFIXES", "MISSING", "OUTSIDE", "TOO_LARGE",
    "UNREADABLE", "UNSUPPORTED",
    "ClassFolders", "ClassTable", "CocoFile", "CocoImage", "DataError", "ErrorReport", "MaskClassMap",
    "bbox_to_xyxy", "check_image", "class_lookup", "clip_box", "display_path", "image_size", "inside_folder",
    "list_images", "listing_of", "load_yolo_dataset", "mask_class_map", "mask_file", "missing_image", "open_image",
    "parse_class_table", "read_class_folders", "read_class_table", "read_coco", "read_lines", "read_mask",
    "read_text_file", "read_yolo_labels", "relative_key", "scan_class_folders", "split_row", "utf8_name_error",
    "yolo_label_files", "yolo_mask_lookup",
]
