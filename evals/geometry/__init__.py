"""Feature geometry: co-occurrence lobes vs decoder-direction clusters, multi-dimensional
clusters in PCA, the power law of the decoder covariance spectrum, and a 2-D map of all features.

    from evals.geometry import lobes_vs_geometry, covariance_spectrum, power_law_slope, feature_map
"""

from evals.geometry.clusters import (angular_similarity, cluster_agreement, cooccurrence_clusters, geometric_clusters,
                                     lobes_vs_geometry, neighbour_clusters, phi_coefficients,
                                     spectral_clusters)
from evals.geometry.crystals import (analogy_rank, distractor_r2, heldout_silhouette, pair_differences,
                                     parallelogram_test, quadruple_shape)
from evals.geometry.decoder import covariance_spectrum, feature_map, power_law_slope
from evals.geometry.galaxy import clustering_entropy, lobe_sweep, spectrum_slope_interval
from evals.geometry.multidim import (cluster_specificity, clusters_as_lists, cyclic_order_test, engels_graph_clusters, mixture_index,
                                     mutual_information_bits, plane_indices, separability_index,
                                     separability_null)
from evals.geometry.plots import plot_cluster_pca, plot_feature_map, plot_planes_by_token, plot_spectrum
from evals.geometry.reconstruct import cache_codes, cluster_reconstructions, pca_2d, reconstructions_from_codes

__all__ = [
    "angular_similarity", "cluster_agreement", "cluster_reconstructions", "cooccurrence_clusters",
    "covariance_spectrum", "feature_map", "geometric_clusters", "lobes_vs_geometry", "neighbour_clusters", "pca_2d", "phi_coefficients",
    "plot_cluster_pca", "plot_feature_map", "plot_spectrum", "power_law_slope", "spectral_clusters",
    # irreducible multi-dimensional features (Engels et al. 2024)
    "cluster_specificity", "clusters_as_lists", "cyclic_order_test", "engels_graph_clusters", "mixture_index", "mutual_information_bits",
    "plane_indices", "plot_planes_by_token", "separability_index", "separability_null", "cache_codes", "reconstructions_from_codes",
    # concept crystals and galaxy-scale measures (Li, Michaud, Tegmark et al. 2024)
    "analogy_rank", "clustering_entropy", "distractor_r2", "heldout_silhouette", "lobe_sweep", "pair_differences",
    "parallelogram_test", "quadruple_shape", "spectrum_slope_interval",
]
