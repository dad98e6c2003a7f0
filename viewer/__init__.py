"""Cloud display.

Owns server-side rendering (decoding every accepted transfer syntax, the DICOM
display pipeline, MPR and MIP), the rendered and thumbnail DICOMweb resources,
the decoded-volume and rendered-frame caches, and the browser viewer.
"""
