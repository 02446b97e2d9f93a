"""BIMCV COVID-19+ vocabulary tables: exact, exhaustive, tested. No substring or regex guessing.

Report labels are the PadChest vocabulary (BIMCV `padchest-covid/trees_code.txt`; the list as read by
suinleelab/cxr_covid `datasets/padchestmap.py`) plus `COVID 19`, `COVID 19 uncertain` and
`viral pneumonia`. Items are matched after stripping the leading space the release writes.
"""

from __future__ import annotations

from covid_cxr_unified.schema.vocab import Covid19Basis, Finding, LabelState, Modality, Sex, View

F = Finding

# Report label -> canonical finding (state positive).
LABELS: dict[str, Finding] = {
    "abnormal foreign body": F.ABNORMAL_FOREIGN_BODY,
    "abscess": F.ABSCESS,
    "adenopathy": F.ADENOPATHY,
    "air bronchogram": F.AIR_BRONCHOGRAM,
    "air fluid level": F.AIR_FLUID_LEVEL,
    "air trapping": F.AIR_TRAPPING,
    "alveolar pattern": F.ALVEOLAR_PATTERN,
    "aortic aneurysm": F.AORTIC_ANEURYSM,
    "aortic atheromatosis": F.AORTIC_ATHEROMATOSIS,
    "aortic button enlargement": F.AORTIC_BUTTON_ENLARGEMENT,
    "aortic elongation": F.AORTIC_ELONGATION,
    "aortic endoprosthesis": F.AORTIC_ENDOPROSTHESIS,
    "apical pleural thickening": F.APICAL_PLEURAL_THICKENING,
    "artificial aortic heart valve": F.ARTIFICIAL_AORTIC_HEART_VALVE,
    "artificial heart valve": F.ARTIFICIAL_HEART_VALVE,
    "artificial mitral heart valve": F.ARTIFICIAL_MITRAL_HEART_VALVE,
    "asbestosis signs": F.ASBESTOSIS_SIGNS,
    "ascendent aortic elongation": F.ASCENDENT_AORTIC_ELONGATION,
    "atelectasis": F.ATELECTASIS,
    "atelectasis basal": F.ATELECTASIS_BASAL,
    "atypical pneumonia": F.ATYPICAL_PNEUMONIA,
    "axial hyperostosis": F.AXIAL_HYPEROSTOSIS,
    "azygoesophageal recess shift": F.AZYGOESOPHAGEAL_RECESS_SHIFT,
    "azygos lobe": F.AZYGOS_LOBE,
    "blastic bone lesion": F.BLASTIC_BONE_LESION,
    "bone cement": F.BONE_CEMENT,
    "bone metastasis": F.BONE_METASTASIS,
    "breast mass": F.BREAST_MASS,
    "bronchiectasis": F.BRONCHIECTASIS,
    "bronchovascular markings": F.BRONCHOVASCULAR_MARKINGS,
    "bullas": F.BULLAS,
    "calcified adenopathy": F.CALCIFIED_ADENOPATHY,
    "calcified densities": F.CALCIFIED_DENSITIES,
    "calcified fibroadenoma": F.CALCIFIED_FIBROADENOMA,
    "calcified granuloma": F.CALCIFIED_GRANULOMA,
    "calcified mediastinal adenopathy": F.CALCIFIED_MEDIASTINAL_ADENOPATHY,
    "calcified pleural plaques": F.CALCIFIED_PLEURAL_PLAQUES,
    "calcified pleural thickening": F.CALCIFIED_PLEURAL_THICKENING,
    "callus rib fracture": F.CALLUS_RIB_FRACTURE,
    "cardiomegaly": F.CARDIOMEGALY,
    "catheter": F.CATHETER,
    "cavitation": F.CAVITATION,
    "central vascular redistribution": F.CENTRAL_VASCULAR_REDISTRIBUTION,
    "central venous catheter": F.CENTRAL_VENOUS_CATHETER,
    "central venous catheter via jugular vein": F.CENTRAL_VENOUS_CATHETER_VIA_JUGULAR_VEIN,
    "central venous catheter via subclavian vein": F.CENTRAL_VENOUS_CATHETER_VIA_SUBCLAVIAN_VEIN,
    "central venous catheter via umbilical vein": F.CENTRAL_VENOUS_CATHETER_VIA_UMBILICAL_VEIN,
    "cervical rib": F.CERVICAL_RIB,
    "chest drain tube": F.CHEST_DRAIN_TUBE,
    "Chilaiditi sign": F.CHILAIDITI_SIGN,
    "chronic changes": F.CHRONIC_CHANGES,
    "clavicle fracture": F.CLAVICLE_FRACTURE,
    "consolidation": F.CONSOLIDATION,
    "COPD signs": F.COPD_SIGNS,
    "costochondral junction hypertrophy": F.COSTOCHONDRAL_JUNCTION_HYPERTROPHY,
    "costophrenic angle blunting": F.COSTOPHRENIC_ANGLE_BLUNTING,
    "cyst": F.CYST,
    "dai": F.DAI,
    "descendent aortic elongation": F.DESCENDENT_AORTIC_ELONGATION,
    "dextrocardia": F.DEXTROCARDIA,
    "diaphragmatic eventration": F.DIAPHRAGMATIC_EVENTRATION,
    "double J stent": F.DOUBLE_J_STENT,
    "dual chamber device": F.DUAL_CHAMBER_DEVICE,
    "electrical device": F.ELECTRICAL_DEVICE,
    "emphysema": F.EMPHYSEMA,
    "empyema": F.EMPYEMA,
    "end on vessel": F.END_ON_VESSEL,
    "endoprosthesis": F.ENDOPROSTHESIS,
    "endotracheal tube": F.ENDOTRACHEAL_TUBE,
    "esophagic dilatation": F.ESOPHAGIC_DILATATION,
    "external foreign body": F.EXTERNAL_FOREIGN_BODY,
    "fibrotic band": F.FIBROTIC_BAND,
    "fissure thickening": F.FISSURE_THICKENING,
    "flattened diaphragm": F.FLATTENED_DIAPHRAGM,
    "fracture": F.FRACTURE,
    "gastrostomy tube": F.GASTROSTOMY_TUBE,
    "goiter": F.GOITER,
    "granuloma": F.GRANULOMA,
    "ground glass pattern": F.GROUND_GLASS_PATTERN,
    "gynecomastia": F.GYNECOMASTIA,
    "heart insufficiency": F.HEART_INSUFFICIENCY,
    "heart valve calcified": F.HEART_VALVE_CALCIFIED,
    "hemidiaphragm elevation": F.HEMIDIAPHRAGM_ELEVATION,
    "hiatal hernia": F.HIATAL_HERNIA,
    "hilar congestion": F.HILAR_CONGESTION,
    "hilar enlargement": F.HILAR_ENLARGEMENT,
    "humeral fracture": F.HUMERAL_FRACTURE,
    "humeral prosthesis": F.HUMERAL_PROSTHESIS,
    "hydropneumothorax": F.HYDROPNEUMOTHORAX,
    "hyperinflated lung": F.HYPERINFLATED_LUNG,
    "hypoexpansion": F.HYPOEXPANSION,
    "hypoexpansion basal": F.HYPOEXPANSION_BASAL,
    "increased density": F.INCREASED_DENSITY,
    "infiltrates": F.INFILTRATES,
    "interstitial pattern": F.INTERSTITIAL_PATTERN,
    "kerley lines": F.KERLEY_LINES,
    "kyphosis": F.KYPHOSIS,
    "laminar atelectasis": F.LAMINAR_ATELECTASIS,
    "lepidic adenocarcinoma": F.LEPIDIC_ADENOCARCINOMA,
    "lipomatosis": F.LIPOMATOSIS,
    "lobar atelectasis": F.LOBAR_ATELECTASIS,
    "loculated fissural effusion": F.LOCULATED_FISSURAL_EFFUSION,
    "loculated pleural effusion": F.LOCULATED_PLEURAL_EFFUSION,
    "lung metastasis": F.LUNG_METASTASIS,
    "lung vascular paucity": F.LUNG_VASCULAR_PAUCITY,
    "lymphangitis carcinomatosa": F.LYMPHANGITIS_CARCINOMATOSA,
    "lytic bone lesion": F.LYTIC_BONE_LESION,
    "major fissure thickening": F.MAJOR_FISSURE_THICKENING,
    "mammary prosthesis": F.MAMMARY_PROSTHESIS,
    "mass": F.MASS,
    "mastectomy": F.MASTECTOMY,
    "mediastinal enlargement": F.MEDIASTINAL_ENLARGEMENT,
    "mediastinal mass": F.MEDIASTINAL_MASS,
    "mediastinal shift": F.MEDIASTINAL_SHIFT,
    "mediastinic lipomatosis": F.MEDIASTINIC_LIPOMATOSIS,
    "metal": F.METAL,
    "miliary opacities": F.MILIARY_OPACITIES,
    "minor fissure thickening": F.MINOR_FISSURE_THICKENING,
    "multiple nodules": F.MULTIPLE_NODULES,
    "nephrostomy tube": F.NEPHROSTOMY_TUBE,
    "nipple shadow": F.NIPPLE_SHADOW,
    "nodule": F.NODULE,
    "non axial articular degenerative changes": F.NON_AXIAL_ARTICULAR_DEGENERATIVE_CHANGES,
    "NSG tube": F.NSG_TUBE,
    "obesity": F.OBESITY,
    "osteopenia": F.OSTEOPENIA,
    "osteoporosis": F.OSTEOPOROSIS,
    "osteosynthesis material": F.OSTEOSYNTHESIS_MATERIAL,
    "pacemaker": F.PACEMAKER,
    "pectum carinatum": F.PECTUM_CARINATUM,
    "pectum excavatum": F.PECTUM_EXCAVATUM,
    "pericardial effusion": F.PERICARDIAL_EFFUSION,
    "pleural effusion": F.PLEURAL_EFFUSION,
    "pleural mass": F.PLEURAL_MASS,
    "pleural plaques": F.PLEURAL_PLAQUES,
    "pleural thickening": F.PLEURAL_THICKENING,
    "pneumomediastinum": F.PNEUMOMEDIASTINUM,
    "pneumonia": F.PNEUMONIA,
    "pneumoperitoneo": F.PNEUMOPERITONEO,
    "pneumothorax": F.PNEUMOTHORAX,
    "post radiotherapy changes": F.POST_RADIOTHERAPY_CHANGES,
    "prosthesis": F.PROSTHESIS,
    "pseudonodule": F.PSEUDONODULE,
    "pulmonary artery enlargement": F.PULMONARY_ARTERY_ENLARGEMENT,
    "pulmonary artery hypertension": F.PULMONARY_ARTERY_HYPERTENSION,
    "pulmonary edema": F.PULMONARY_EDEMA,
    "pulmonary fibrosis": F.PULMONARY_FIBROSIS,
    "pulmonary hypertension": F.PULMONARY_HYPERTENSION,
    "pulmonary mass": F.PULMONARY_MASS,
    "pulmonary venous hypertension": F.PULMONARY_VENOUS_HYPERTENSION,
    "reservoir central venous catheter": F.RESERVOIR_CENTRAL_VENOUS_CATHETER,
    "respiratory distress": F.RESPIRATORY_DISTRESS,
    "reticular interstitial pattern": F.RETICULAR_INTERSTITIAL_PATTERN,
    "reticulonodular interstitial pattern": F.RETICULONODULAR_INTERSTITIAL_PATTERN,
    "rib fracture": F.RIB_FRACTURE,
    "right sided aortic arch": F.RIGHT_SIDED_AORTIC_ARCH,
    "round atelectasis": F.ROUND_ATELECTASIS,
    "sclerotic bone lesion": F.SCLEROTIC_BONE_LESION,
    "scoliosis": F.SCOLIOSIS,
    "segmental atelectasis": F.SEGMENTAL_ATELECTASIS,
    "single chamber device": F.SINGLE_CHAMBER_DEVICE,
    "soft tissue mass": F.SOFT_TISSUE_MASS,
    "sternoclavicular junction hypertrophy": F.STERNOCLAVICULAR_JUNCTION_HYPERTROPHY,
    "sternotomy": F.STERNOTOMY,
    "subacromial space narrowing": F.SUBACROMIAL_SPACE_NARROWING,
    "subcutaneous emphysema": F.SUBCUTANEOUS_EMPHYSEMA,
    "superior mediastinal enlargement": F.SUPERIOR_MEDIASTINAL_ENLARGEMENT,
    "supra aortic elongation": F.SUPRA_AORTIC_ELONGATION,
    "surgery": F.SURGERY,
    "surgery breast": F.SURGERY_BREAST,
    "surgery heart": F.SURGERY_HEART,
    "surgery humeral": F.SURGERY_HUMERAL,
    "surgery lung": F.SURGERY_LUNG,
    "surgery neck": F.SURGERY_NECK,
    "suture material": F.SUTURE_MATERIAL,
    "thoracic cage deformation": F.THORACIC_CAGE_DEFORMATION,
    "total atelectasis": F.TOTAL_ATELECTASIS,
    "tracheal shift": F.TRACHEAL_SHIFT,
    "tracheostomy tube": F.TRACHEOSTOMY_TUBE,
    "tuberculosis": F.TUBERCULOSIS,
    "tuberculosis sequelae": F.TUBERCULOSIS_SEQUELAE,
    "vascular hilar enlargement": F.VASCULAR_HILAR_ENLARGEMENT,
    "vascular redistribution": F.VASCULAR_REDISTRIBUTION,
    "ventriculoperitoneal drain tube": F.VENTRICULOPERITONEAL_DRAIN_TUBE,
    "vertebral anterior compression": F.VERTEBRAL_ANTERIOR_COMPRESSION,
    "vertebral compression": F.VERTEBRAL_COMPRESSION,
    "vertebral degenerative changes": F.VERTEBRAL_DEGENERATIVE_CHANGES,
    "vertebral fracture": F.VERTEBRAL_FRACTURE,
    "volume loss": F.VOLUME_LOSS,
    "viral pneumonia": F.VIRAL_PNEUMONIA,
    "normal": F.NO_FINDING,
}

# Labels that speak about COVID-19 itself: finding COVID19 with this state, and report evidence.
COVID_LABELS: dict[str, LabelState] = {
    "COVID 19": LabelState.POSITIVE,
    "COVID 19 uncertain": LabelState.UNCERTAIN,
}

# Report markers: not findings. `unchanged` is resolved from the previous study of the patient.
UNCHANGED = "unchanged"
MARKERS: dict[str, str] = {
    "exclude": "report marker: exclude",
    "suboptimal study": "report marker: suboptimal study",
    UNCHANGED: "report marker: unchanged",
}

# UMLS CUIs, only where public code printing the real files pairs the CUI with the label
# (research note bimcv_format.md §2.4: UC15 notebook output, KAV). Other labels keep cui=None;
# the row's own labelCUIS stay in `raw`.
LABEL_CUIS: dict[str, str] = {
    "COVID 19": "C5203670",
    "COVID 19 uncertain": "C5203671",
    "ground glass pattern": "C3544344",
    "consolidation": "C0521530",
    "normal": "C0205307",
    "pneumonia": "C0032285",
    "infiltrates": "C0277877",
}

# Diagnostic tests (EHR/sil_reg_covid*.tsv): `ACT` is the antigen test.
TEST_KINDS: dict[str, Covid19Basis] = {
    "PCR": Covid19Basis.PCR,
    "IGG": Covid19Basis.SEROLOGY,
    "IGM": Covid19Basis.SEROLOGY,
    "ACT": Covid19Basis.ANTIGEN,
}
TEST_RESULTS: dict[str, LabelState] = {
    "POSITIVO": LabelState.POSITIVE,
    "NEGATIVO": LabelState.NEGATIVE,
    "INDETERMINADO": LabelState.UNCERTAIN,
}
# When several kinds of test say something, the overall basis is the first of these that does.
TEST_BASIS_PRIORITY = (Covid19Basis.PCR, Covid19Basis.ANTIGEN, Covid19Basis.SEROLOGY)

SEXES: dict[str, Sex] = {"M": Sex.MALE, "F": Sex.FEMALE}
MODALITIES: dict[str, Modality] = {"CR": Modality.CR, "DX": Modality.DX}

# View Position (0018,5101).
VIEW_POSITIONS: dict[str, View] = {
    "PA": View.PA,
    "AP": View.AP,
    "LL": View.LATERAL,
    "RL": View.LATERAL,
    "LATERAL": View.LATERAL,
    "LAT": View.LATERAL,
}
# View Code Sequence (0054,0220) code values (SNOMED-RT, SNM3), e.g. R-10214 "postero-anterior".
VIEW_CODES: dict[str, View] = {
    "R-10214": View.PA,
    "R-10206": View.AP,
    "R-10236": View.LATERAL,
    "R-10232": View.LATERAL,
}
# Series Description (0008,103E): free Spanish text; only spellings seen in public code reading the
# release are listed (suinleelab/cxr_covid). Descriptions known to name no view are in NO_VIEW.
SERIES_DESCRIPTIONS: dict[str, View] = {
    "TORAX AP": View.AP,
    "TORAX PA": View.PA,
    "TORAX LAT": View.LATERAL,
    "W034 TÓRAX LAT.": View.LATERAL,
    "TORAX SUPINE AP": View.AP_SUPINE,
}
SERIES_DESCRIPTIONS_WITHOUT_VIEW = {"Chest", "TORAX", "TÓRAX", "Tórax"}
# The file name's `vp-` token: wrong for hundreds of images, hence the last resort.
FILENAME_VIEWS: dict[str, View] = {"pa": View.PA, "ap": View.AP, "ll": View.LATERAL, "lateral": View.LATERAL}

# Sessions BIMCV's own QC marked `Exclude=True` in COVID19_POSI_v1.0.xlsx (iteration 1; research note
# bimcv_format.md §8), with its reason. Their records are kept and flagged, never silently dropped.
KNOWN_SESSION_ISSUES: dict[tuple[str, str], str] = {
    ("sub-S03240", "ses-E07784"): "burned in information",
    ("sub-S03067", "ses-E07350"): "burned in information",
    ("sub-S03240", "ses-E07626"): "burned in information",
    ("sub-S03067", "ses-E07908"): "burned in information",
    ("sub-S03169", "ses-E07193"): "burned in information",
    ("sub-S03214", "ses-E07979"): "burned in information",
    ("sub-S03218", "ses-E07970"): "burned in information",
    ("sub-S03169", "ses-E07878"): "burned in information",
    ("sub-S03068", "ses-E06402"): "inverted",
    ("sub-S04275", "ses-E08736"): "inverted",
    ("sub-S04190", "ses-E08730"): "inverted",
    ("sub-S03936", "ses-E08636"): "inverted",
}
