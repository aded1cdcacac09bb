# Token-level and hierarchical sparse attention (gather, top-k, TokenSelect, Recycled, HiP,
# DHSA, HyperAttention).
attend_add_test(test_sparse_gather SOURCES test_gather.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_topk SOURCES test_topk.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_top_k_long SOURCES test_top_k_long.cpp ARCHS ${KERNEL_ARCHS})
attend_add_test(test_sparse_select SOURCES test_select.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_int8_scores SOURCES test_int8_scores.cpp ARCHS ${KERNEL_ARCHS})
attend_add_test(test_sparse_hip SOURCES test_hip.cpp ARCHS ${FAMILY_ARCHS})
attend_add_test(test_sparse_dhsa_hyper SOURCES test_dhsa_hyper.cpp ARCHS ${FAMILY_ARCHS})
