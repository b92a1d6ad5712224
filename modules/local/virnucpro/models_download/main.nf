// Download ESM-2 3B, DNABERT-S and the original classifiers once per site. Runs where Nextflow runs
// (`executor 'local'`: login nodes have the network, compute nodes often do not) and is kept with
// `storeDir` (conf/modules.config), so later runs find the models there and skip this task.
process VIRNUCPRO_MODELS_DOWNLOAD {
    tag 'models'
    label 'process_single'
    executor 'local'

    output:
    path 'virnucpro_models', type: 'dir', emit: models
    tuple val("${task.process}"), val('virnucpro'), eval('virnucpro --version | sed "s/^virnucpro //"'), emit: versions_virnucpro, topic: versions

    script:
    def args = task.ext.args ?: ''
    """
    export HF_HUB_OFFLINE=0
    virnucpro models download --dest virnucpro_models ${args}
    virnucpro models check virnucpro_models
    """

    stub:
    """
    mkdir -p virnucpro_models
    echo '{"format_version": 1, "models": {}, "stub": true}' > virnucpro_models/manifest.json
    """
}
