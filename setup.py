"""Install mmdsnet. The OpenMMLab stack itself is installed by tools/install_env.sh
(mmcv must be built with its ops against the local torch, so it is not a pip dependency)."""
import os.path as osp

from setuptools import find_packages, setup


def read_version():
    namespace = {}
    with open(osp.join(osp.dirname(__file__), 'mmdsnet', 'version.py')) as f:
        exec(f.read(), namespace)
    return namespace['__version__']


setup(
    name='mmdsnet',
    version=read_version(),
    description='DS-Net (Dual-stream Network) backbone and DS-FPN neck for '
    'mmdetection 3.x and mmsegmentation 1.x',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmdsnet', 'mmdsnet.*']),
    python_requires='>=3.8',
    install_requires=['torch>=2.1', 'mmengine>=0.10.0,<1.0', 'numpy'],
    extras_require={
        'mim': ['mmcv>=2.0.0rc4,<2.2.0', 'mmdet>=3.0.0,<3.4', 'mmsegmentation>=1.0.0,<1.3'],
        'tests': ['pytest', 'pycocotools'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
