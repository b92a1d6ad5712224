// VirNucPro prediction: PREPARE each sample into ORF shards, EMBED every shard (one GPU task each),
// gather a sample's shards whatever order they finish in, PREDICT per sample.

include { VIRNUCPRO_MODELS_DOWNLOAD } from '../modules/local/virnucpro/models_download'
include { VIRNUCPRO_MODELS_TINY     } from '../modules/local/virnucpro/models_tiny'
include { VIRNUCPRO_PREPARE         } from '../modules/local/virnucpro/prepare'
include { VIRNUCPRO_EMBED           } from '../modules/local/virnucpro/embed'
include { VIRNUCPRO_PREDICT         } from '../modules/local/virnucpro/predict'
include { versionsToYaml            } from '../subworkflows/local/utils_virnucpro_pipeline'

workflow VIRNUCPRO {
    take:
    ch_samples     // channel: [ val(meta), [ reads ] ]
    models         // string: models directory, or null
    tiny_models    // boolean: make tiny random models (tests) when no models directory is given
    classifier     // string: classifier .pth overriding the models directory's, or null
    checkpoint_dir // string: EMBED checkpoints, outside the task work directories
    outdir         // string: results directory

    main:
    // Models: a staged directory (--models), tiny test models, or the download kept per site
    def ch_models = channel.empty()
    if (models) {
        ch_models = channel.value(file(models, checkIfExists: true))
    }
    else if (tiny_models) {
        VIRNUCPRO_MODELS_TINY()
        ch_models = VIRNUCPRO_MODELS_TINY.out.models
    }
    else {
        VIRNUCPRO_MODELS_DOWNLOAD()
        ch_models = VIRNUCPRO_MODELS_DOWNLOAD.out.models
    }
    def ch_classifier = classifier ? channel.value(file(classifier, checkIfExists: true)) : channel.value([])

    VIRNUCPRO_PREPARE(ch_samples)

    // One EMBED task per shard; each carries the number of shards of its sample
    def ch_shards = VIRNUCPRO_PREPARE.out.shards.flatMap { meta, shards ->
        shards.collect { shard -> [meta + [n_shards: shards.size()], shard] }
    }
    // Checkpoints outside the task work directories: a retried or resumed EMBED continues mid-shard
    VIRNUCPRO_EMBED(ch_shards, ch_models, checkpoint_dir)

    // A sample's group is released as soon as its last shard is embedded; the shards are sorted by
    // name so that PREDICT sees the same input (and -resume finds it cached) whatever the order
    def ch_embeddings = VIRNUCPRO_EMBED.out.embeddings
        .map { meta, h5 -> [groupKey(meta.id, meta.n_shards), meta.id, h5] }
        .groupTuple()
        .map { _key, ids, h5s -> [ids[0], h5s.sort { h5 -> h5.name }] }
    def ch_predict = VIRNUCPRO_PREPARE.out.prepared
        .map { meta, prepared -> [meta.id, meta, prepared] }
        .join(ch_embeddings, failOnMismatch: true, failOnDuplicate: true)
        .map { _id, meta, prepared, h5s -> [meta, prepared, h5s] }
    VIRNUCPRO_PREDICT(ch_predict, ch_models, ch_classifier)

    // Software versions of every process, from the `versions` topic
    def ch_versions_yml = channel.topic('versions')
        .unique()
        .collect(flat: false)
        .map { rows -> versionsToYaml(rows) }
        .collectFile(name: 'virnucpro_software_versions.yml', storeDir: "${outdir}/pipeline_info", newLine: true)

    emit:
    predictions  = VIRNUCPRO_PREDICT.out.predictions  // channel: [ val(meta), path(prediction_results.txt) ]
    highestscore = VIRNUCPRO_PREDICT.out.highestscore // channel: [ val(meta), path(prediction_results_highestscore.csv) ]
    sequences    = VIRNUCPRO_PREDICT.out.sequences    // channel: [ val(meta), path(sequences.tsv) ]
    embeddings   = VIRNUCPRO_EMBED.out.embeddings     // channel: [ val(meta), path(shard.h5) ]
    versions     = ch_versions_yml                    // channel: path(virnucpro_software_versions.yml)
}
