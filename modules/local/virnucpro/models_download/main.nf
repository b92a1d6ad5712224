// Download ESM-2 3B, DNABERT-S and the original classifiers once per site. Runs where Nextflow runs
// (`executor 'local'`: login nodes have the network, compute nodes often do not; the awsbatch and
// google profiles make it a batch job, since the local executor refuses a bucket work directory) and
// is kept with `storeDir` (conf/modules.config), so later runs find the models there and skip this
// task. The models end up in <--models_store>/virnucpro_models/, the folder a later --models names.
// No `eval` version outputs: with storeDir they fail on the second run (nextflow-io/nextflow#5785);
// the other processes report the same virnucpro.
process VIRNUCPRO_MODELS_DOWNLOAD {
    tag 'models'
    label 'process_single'
    executor 'local'

    output:
    path 'virnucpro_models', type: 'dir', emit: models

    script:
    def args = task.ext.args ?: ''
    """
    require_virnucpro.sh ${workflow.manifest.version}
    virnucpro models download --dest virnucpro_models ${args}
    virnucpro models check virnucpro_models
    """

    stub:
    """
    mkdir -p virnucpro_models
    touch virnucpro_models/300_model.pth virnucpro_models/500_model.pth
    echo '{"format_version": 1, "stub": true, "models": {"classifier_300": {"files": ["300_model.pth"]}, "classifier_500": {"files": ["500_model.pth"]}}}' > virnucpro_models/manifest.json
    """
}
