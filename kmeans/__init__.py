"""sage-kmeans: a SageMaker container that trains and serves scikit-learn K-Means."""
