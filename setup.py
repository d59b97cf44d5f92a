"""Install mmdsnet. The OpenMMLab stack itself is installed by tools/install/install_env.sh
(mmcv must be built with its ops against the local torch, so it is not a pip dependency)."""

import os
import os.path as osp
import shutil
import sys

from setuptools import find_packages, setup

ROOT = osp.dirname(osp.abspath(__file__))
# What `mim` (openmim) reads from an installed package: <package>/.mim/model-index.yml and the
# configs and tools it points to.
MIM_FILES = ('model-index.yml', 'configs', 'tools')


def read_version():
    namespace = {}
    with open(osp.join(ROOT, 'mmdsnet', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


def copy_mim_files():
    """Copy the mim metadata into mmdsnet/.mim when a wheel or an sdist is built.

    mim looks for it inside the installed package, as it does for mmdet and mmseg. An editable
    install leaves nothing in site-packages for mim to find, so nothing is copied then. In an
    unpacked sdist the sources are absent and the copy it already holds is kept.
    """
    if not {'bdist_wheel', 'sdist'} & set(sys.argv):
        return
    mim_dir = osp.join(ROOT, 'mmdsnet', '.mim')
    for name in MIM_FILES:
        src, dst = osp.join(ROOT, name), osp.join(mim_dir, name)
        if not osp.exists(src):
            continue
        if osp.isdir(dst):
            shutil.rmtree(dst)
        elif osp.exists(dst):
            os.remove(dst)
        os.makedirs(mim_dir, exist_ok=True)
        if osp.isdir(src):
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
        else:
            shutil.copyfile(src, dst)


copy_mim_files()
setup(
    name='mmdsnet',
    version=read_version(),
    description='DS-Net (Dual-stream Network) backbone and DS-FPN neck for '
    'mmdetection 3.x and mmsegmentation 1.x',
    long_description=open(osp.join(ROOT, 'README.md')).read()
    if osp.exists(osp.join(ROOT, 'README.md'))
    else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmdsnet', 'mmdsnet.*']),
    package_data={'mmdsnet': ['.mim/model-index.yml', '.mim/configs/**/*', '.mim/tools/**/*']},
    # str.removeprefix (checkpoint conversion) needs Python 3.9.
    python_requires='>=3.9',
    install_requires=['torch>=2.1', 'mmengine>=0.10.0,<1.0', 'numpy'],
    extras_require={
        'mim': ['mmcv>=2.0.0rc4,<2.2.0', 'mmdet>=3.0.0,<3.4', 'mmsegmentation>=1.0.0,<1.3'],
        # DS-Net as an mmpretrain classifier (optional). mmpretrain imports torchvision.ops, and
        # that torchvision must be the build made for the installed torch (0.29.1 for 2.14.1;
        # requirements/classification.txt pins the tested pair): it is not listed here, since pip
        # would replace the installed torch to fit the newest torchvision.
        'classification': ['mmpretrain>=1.0.0,<1.3'],
        'tests': ['pytest', 'pycocotools'],
    },
    license='Apache-2.0',
    license_files=['LICENSE'],
    zip_safe=False,
)
