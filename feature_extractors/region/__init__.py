"""Region features: a Faster R-CNN feature extractor assembled from named parts."""
