"""A registered version at prediction time: the posterior bundle, the MLflow pyfunc, loading, batch scoring, and
its fit and calibration on labelled rows."""
