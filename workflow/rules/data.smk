localrules:
    download_cifar10,


rule download_cifar10:
    output:
        f"{config['data']['root']}/cifar-10-batches-py/batches.meta",
    log:
        rule_log("download_cifar10", "download"),
    script:
        "../scripts/download_cifar10.py"
