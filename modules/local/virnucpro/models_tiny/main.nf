// Tiny random models in the real on-disk formats, for the `test` profile (no download, CPU, seconds).
// Everything computed with them is marked as made with tiny models.
process VIRNUCPRO_MODELS_TINY {
    tag 'tiny'
    label 'process_single'

    output:
    path 'tiny_models', type: 'dir', emit: models
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro

    script:
    """
    require_virnucpro.sh ${workflow.manifest.version}
    virnucpro models tiny tiny_models
    """

    stub:
    """
    mkdir -p tiny_models
    touch tiny_models/300_model.pth tiny_models/500_model.pth
    echo '{"format_version": 1, "stub": true, "models": {"classifier_300": {"files": ["300_model.pth"]}, "classifier_500": {"files": ["500_model.pth"]}}}' > tiny_models/manifest.json
    """
}
