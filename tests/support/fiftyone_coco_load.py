"""Run by the export tests with FiftyOne's own venv (``.venv-fo``, made by ``scripts/setup.sh --dev``): import an
exported folder with FiftyOne's COCO importer, given only the directory, and write what it loaded to a JSON file
(FiftyOne's progress bars go to stdout).

    .venv-fo/bin/python tests/support/fiftyone_coco_load.py DIR OUT.json

The caller points FiftyOne's database, config and home at a temporary folder. Not a maskloop module: maskloop never
needs FiftyOne.
"""

from __future__ import annotations

import json
import sys


def main(dataset_dir: str, out_path: str) -> int:
    import fiftyone as fo

    dataset = fo.Dataset.from_dir(
        dataset_dir=dataset_dir, dataset_type=fo.types.COCODetectionDataset, label_types=["segmentations"]
    )
    (label_field,) = dataset.get_field_schema(embedded_doc_type=fo.Detections)  # "ground_truth" by default
    samples = []
    for sample in dataset.iter_samples():
        field = sample[label_field]
        samples.append(
            {
                "filepath": sample.filepath,
                "width": sample.metadata.width,
                "height": sample.metadata.height,
                "detections": [
                    {
                        "label": d.label,
                        "bounding_box": list(d.bounding_box),
                        "mask_shape": None if d.mask is None else list(d.mask.shape),
                        "mask_pixels": None if d.mask is None else int(d.mask.astype(bool).sum()),
                    }
                    for d in (field.detections if field is not None else [])
                ],
            }
        )
    with open(out_path, "w") as out:
        json.dump({"count": len(dataset), "classes": dataset.default_classes, "samples": samples}, out)
    dataset.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
