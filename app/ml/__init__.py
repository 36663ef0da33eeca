"""modelgate.ml: data, training and model registry, pure Python with no Flask.

dataset (versions by content hash), signature (the scoring hot path's record check),
config + training + evaluation (the model), predict (records in, labelled probabilities out),
package (model package directories), registry (MLflow), workflow (the train job in one call).
Nothing is imported here: pandas, scikit-learn and MLflow load only when used.
"""
