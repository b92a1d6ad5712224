// VirNucPro prediction: PREPARE each sample into ORF shards, EMBED every shard (one GPU task each),
// gather a sample's shards whatever order they finish in, PREDICT per sample, then one SUMMARY of
// the run (reconciled counts per sample) rendered by MULTIQC.

include { VIRNUCPRO_MODELS_DOWNLOAD } from '../modules/local/virnucpro/models_download'
include { VIRNUCPRO_MODELS_TINY     } from '../modules/local/virnucpro/models_tiny'
include { VIRNUCPRO_PREPARE         } from '../modules/local/virnucpro/prepare'
include { VIRNUCPRO_EMBED           } from '../modules/local/virnucpro/embed'
include { VIRNUCPRO_PREDICT         } from '../modules/local/virnucpro/predict'
include { VIRNUCPRO_SUMMARY         } from '../modules/local/virnucpro/summary'
include { VIRNUCPRO_VERSIONS        } from '../modules/local/virnucpro/versions'
include { MULTIQC                   } from '../modules/local/multiqc'
include { versionsToYaml ; shardHasNoRecords ; classifierFiles ; userClassifierFiles ; classifierSha256 ; modelsCacheKey ; encoderPins } from '../subworkflows/local/utils_virnucpro_pipeline'

workflow VIRNUCPRO {
    take:
    ch_samples     // channel: [ val(meta), [ reads ] ]
    models         // string: models directory, or null
    tiny_models    // boolean: make tiny random models (tests) when no models directory is given
    classifier     // string: classifier .pth overriding the models directory's, or null
    chunk_size     // integer: 300 or 500, picks the classifier of the models directory
    checkpoint_dir // string: EMBED checkpoints, outside the task work directories
    skip_multiqc   // boolean: no MultiQC report

    main:
    def ch_versions = channel.empty()

    // Models: a staged directory (--models), tiny test models, or the download kept per site
    def ch_models = channel.empty()
    if (models) {
        ch_models = channel.value(file(models, glob: false, checkIfExists: true))
    }
    else if (tiny_models) {
        VIRNUCPRO_MODELS_TINY()
        ch_models = VIRNUCPRO_MODELS_TINY.out.models
        ch_versions = ch_versions.mix(VIRNUCPRO_MODELS_TINY.out.versions_virnucpro)
    }
    else {
        VIRNUCPRO_MODELS_DOWNLOAD()
        ch_models = VIRNUCPRO_MODELS_DOWNLOAD.out.models
    }
    // PREDICT needs the classifier alone: the user's, or the models directory's one for the chunk size,
    // with the sha256 of its file at the start (each PREDICT task checks it scored with that one)
    def ch_classifier = (classifier
        ? channel.value(userClassifierFiles(file(classifier, glob: false, checkIfExists: true)))
        : ch_models.map { dir -> classifierFiles(dir, chunk_size) })
        .map { files -> [files, classifierSha256(files, classifier ? true : false)] }

    VIRNUCPRO_PREPARE(ch_samples)
    ch_versions = ch_versions.mix(VIRNUCPRO_PREPARE.out.versions_virnucpro)

    // One EMBED task per shard; each carries the number of shards of its sample, and the shard of a
    // sample with no ORF (its only one) no_orf: it asks for no GPU (conf/base.config)
    def ch_shards = VIRNUCPRO_PREPARE.out.shards.flatMap { meta, shards ->
        shards.collect { shard ->
            [meta + [n_shards: shards.size()] + (shardHasNoRecords(shard) ? [no_orf: true] : [:]), shard]
        }
    }
    // Checkpoints outside the task work directories: a retried or resumed EMBED continues mid-shard
    // The models folder as it is at the start (pins: its manifest's encoder entries, read once): EMBED
    // tasks started later check they read and wrote with those encoders
    def ch_pinned_models = ch_models.map { dir ->
        def pins = encoderPins(dir)
        [dir, modelsCacheKey(dir, pins), groovy.json.JsonOutput.toJson(pins ?: [:])]
    }
    VIRNUCPRO_EMBED(ch_shards, ch_pinned_models, checkpoint_dir)
    ch_versions = ch_versions.mix(VIRNUCPRO_EMBED.out.versions_virnucpro, VIRNUCPRO_EMBED.out.versions_torch)

    // A sample's group is released as soon as its last shard is embedded; the shards are sorted by
    // name so that PREDICT sees the same input (and -resume finds it cached) whatever the order
    def ch_embeddings = VIRNUCPRO_EMBED.out.embeddings
        .map { meta, h5 -> [groupKey(meta.id, meta.n_shards), meta.id, h5] }
        .groupTuple()
        .map { _key, ids, h5s -> [ids[0], h5s.sort { h5 -> h5.name }] }
    def ch_predict = VIRNUCPRO_PREPARE.out.prepared
        .map { meta, prepared -> [meta.id, meta, prepared] }
        // no failOnMismatch: when another sample's task fails, the channels close with this
        // sample's shards still embedding, and a mismatch error would kill them (errorStrategy
        // 'finish' lets them end); a run with a failed task fails anyway
        .join(ch_embeddings, failOnDuplicate: true)
        .map { _id, meta, prepared, h5s -> [meta, prepared, h5s] }
    VIRNUCPRO_PREDICT(ch_predict, ch_classifier, classifier ? true : false)
    ch_versions = ch_versions.mix(VIRNUCPRO_PREDICT.out.versions_virnucpro)

    // One table for the run, every sample reconciled from input records to table rows
    // every sample of the run is named: one without a row (its task failed, the failure ignored) is
    // listed as such; with no row at all (every sample failed) the table still says so
    VIRNUCPRO_SUMMARY(
        VIRNUCPRO_PREDICT.out.summary.map { _meta, row -> row }.collect(sort: true).ifEmpty([]),
        ch_samples.map { meta, _reads -> meta.id }.collect(sort: true)
    )
    ch_versions = ch_versions.mix(VIRNUCPRO_SUMMARY.out.versions_python)

    // Software versions of every process: [process, tool, version] tuples as one YAML file
    VIRNUCPRO_VERSIONS(ch_versions.unique().collect(flat: false).map { rows -> versionsToYaml(rows) })
    def ch_versions_yml = VIRNUCPRO_VERSIONS.out.yml

    if (!skip_multiqc) {
        MULTIQC(
            VIRNUCPRO_SUMMARY.out.multiqc.mix(ch_versions_yml).collect(),
            channel.value(file("${projectDir}/assets/multiqc_config.yml", glob: false, checkIfExists: true))
        )
    }

    emit:
    predictions  = VIRNUCPRO_PREDICT.out.predictions  // channel: [ val(meta), path(prediction_results.txt) ]
    highestscore = VIRNUCPRO_PREDICT.out.highestscore // channel: [ val(meta), path(prediction_results_highestscore.csv) ]
    sequences    = VIRNUCPRO_PREDICT.out.sequences    // channel: [ val(meta), path(sequences.tsv) ]
    embeddings   = VIRNUCPRO_EMBED.out.embeddings     // channel: [ val(meta), path(shard.h5) ]
    summary      = VIRNUCPRO_SUMMARY.out.summary      // channel: path(virnucpro_summary.tsv)
    versions     = ch_versions_yml                    // channel: path(virnucpro_software_mqc_versions.yml)
}
